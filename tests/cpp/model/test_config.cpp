// config.json parsing: both spellings transformers has written, class defaults, and every
// rejected input naming its field.
#include <gtest/gtest.h>

#include <fstream>

#include "model/config.h"
#include "model_test_util.h"

namespace llmcore {
namespace {

using testing_util::ScratchDir;
using testing_util::value_error_of;

// A Llama 3.1 8B config.json as transformers 4.x wrote it.
const char* kLlama31Classic = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009],
  "hidden_act": "silu",
  "hidden_size": 4096,
  "intermediate_size": 14336,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 8.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "vocab_size": 128256
})";

// The same model as transformers 5.x writes it.
const char* kLlama31New = R"({
  "architectures": ["LlamaForCausalLM"],
  "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009],
  "dtype": "bfloat16",
  "head_dim": 128,
  "hidden_size": 4096,
  "intermediate_size": 14336,
  "max_position_embeddings": 131072,
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_parameters": {
    "factor": 8.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "rope_type": "llama3"
  },
  "vocab_size": 128256
})";

void expect_llama31(const ModelConfig& c) {
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 14336);
  EXPECT_EQ(c.num_hidden_layers, 32);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.rope_type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_EQ(c.dtype, DType::kBF16);
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
}

TEST(ModelConfig, ParsesTransformers4Spelling) {
  expect_llama31(ModelConfig::from_json_string(kLlama31Classic));
}

TEST(ModelConfig, ParsesTransformers5Spelling) {
  expect_llama31(ModelConfig::from_json_string(kLlama31New));
}

// Builds a config from a minimal Llama body plus extra "key": value text.
std::string llama_with(const std::string& extra, const std::string& arch = "LlamaForCausalLM") {
  std::string s = R"({"architectures": [")" + arch + R"("], "vocab_size": 1000, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4)";
  if (!extra.empty()) s += ", " + extra;
  return s + "}";
}

TEST(ModelConfig, LlamaDefaults) {
  const ModelConfig c = ModelConfig::from_json_string(llama_with(""));
  EXPECT_EQ(c.num_key_value_heads, 4);  // = num_attention_heads
  EXPECT_EQ(c.head_dim, 16);            // = 64 / 4
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.rope_scaling.rope_type, "default");
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.qkv_bias || c.o_bias || c.mlp_bias);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_EQ(c.dtype, DType::kF32);
  EXPECT_EQ(c.bos_token_id, -1);
  EXPECT_TRUE(c.eos_token_ids.empty());
}

TEST(ModelConfig, HeadDimExplicitOrNull) {
  EXPECT_EQ(ModelConfig::from_json_string(llama_with(R"("head_dim": 32)")).head_dim, 32);
  EXPECT_EQ(ModelConfig::from_json_string(llama_with(R"("head_dim": null)")).head_dim, 16);
}

TEST(ModelConfig, LlamaBiasesAndScalarEos) {
  const ModelConfig c = ModelConfig::from_json_string(
      llama_with(R"("attention_bias": true, "mlp_bias": true, "eos_token_id": 2, "bos_token_id": 1,
                    "rope_scaling": null, "torch_dtype": "float16", "num_key_value_heads": 2)"));
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_TRUE(c.o_bias);
  EXPECT_TRUE(c.mlp_bias);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.rope_scaling.rope_type, "default");
  EXPECT_EQ(c.dtype, DType::kF16);
  EXPECT_EQ(c.num_key_value_heads, 2);
}

TEST(ModelConfig, LinearRopeOldTypeKey) {
  const ModelConfig c = ModelConfig::from_json_string(
      llama_with(R"("rope_theta": 20000.0, "rope_scaling": {"type": "linear", "factor": 4.0})"));
  EXPECT_EQ(c.rope_scaling.rope_type, "linear");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 4.0);
  EXPECT_DOUBLE_EQ(c.rope_theta, 20000.0);
}

TEST(ModelConfig, Llama3OriginalMaxFallsBackToMaxPositions) {
  const ModelConfig c = ModelConfig::from_json_string(llama_with(
      R"("max_position_embeddings": 4096, "rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4,
         "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4})"));
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 4096);
}

TEST(ModelConfig, Qwen2Flags) {
  const ModelConfig c = ModelConfig::from_json_string(llama_with(
      R"("use_sliding_window": false, "sliding_window": 131072, "max_window_layers": 28,
         "tie_word_embeddings": true, "attention_bias": false)",
      "Qwen2ForCausalLM"));
  EXPECT_EQ(c.model_type, "qwen2");
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.max_position_embeddings, 32768);  // Qwen2Config's default
}

TEST(ModelConfig, MistralSlidingWindow) {
  const std::string m = "MistralForCausalLM";
  EXPECT_EQ(
      ModelConfig::from_json_string(llama_with(R"("sliding_window": 4096)", m)).sliding_window,
      4096);
  EXPECT_EQ(
      ModelConfig::from_json_string(llama_with(R"("sliding_window": null)", m)).sliding_window, 0);
  // Absent means MistralConfig's class default.
  const ModelConfig c = ModelConfig::from_json_string(llama_with("", m));
  EXPECT_EQ(c.sliding_window, 4096);
  EXPECT_EQ(c.model_type, "mistral");
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_FALSE(c.qkv_bias || c.o_bias || c.mlp_bias);
}

void expect_error_mentions(const std::string& json, std::initializer_list<const char*> parts) {
  const std::string msg = value_error_of([&] { ModelConfig::from_json_string(json); });
  for (const char* p : parts)
    EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
}

TEST(ModelConfig, RejectsUnsupportedArchitectureListingSupported) {
  expect_error_mentions(
      llama_with("", "GPT2LMHeadModel"),
      {"GPT2LMHeadModel", "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"});
  expect_error_mentions(R"({"vocab_size": 10})", {"architectures", "LlamaForCausalLM"});
  expect_error_mentions(R"({"architectures": []})", {"architectures"});
}

TEST(ModelConfig, RejectsMissingAndNonPositiveSizes) {
  expect_error_mentions(
      R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 1000, "intermediate_size": 128,
                           "num_hidden_layers": 2, "num_attention_heads": 4})",
      {"hidden_size", "missing"});
  expect_error_mentions(llama_with(R"("vocab_size": 0)"), {"vocab_size", "0"});
  expect_error_mentions(llama_with(R"("num_hidden_layers": -1)"), {"num_hidden_layers", "-1"});
  expect_error_mentions(llama_with(R"("num_key_value_heads": 0)"), {"num_key_value_heads"});
  expect_error_mentions(llama_with(R"("head_dim": 0)"), {"head_dim"});
  expect_error_mentions(llama_with(R"("max_position_embeddings": 0)"), {"max_position_embeddings"});
  expect_error_mentions(llama_with(R"("hidden_size": "64")"), {"hidden_size", "integer"});
  expect_error_mentions(llama_with(R"("hidden_size": 64.5)"), {"hidden_size", "integer"});
}

TEST(ModelConfig, RejectsInconsistentHeads) {
  expect_error_mentions(llama_with(R"("num_key_value_heads": 3)"),
                        {"num_key_value_heads", "3", "4"});
  expect_error_mentions(llama_with(R"("hidden_size": 66)"),
                        {"hidden_size", "66", "num_attention_heads"});
  expect_error_mentions(llama_with(R"("head_dim": 15)"), {"head_dim", "even", "15"});
}

TEST(ModelConfig, RejectsUnsupportedRope) {
  expect_error_mentions(llama_with(R"("rope_scaling": {"rope_type": "yarn", "factor": 4.0})"),
                        {"yarn"});
  expect_error_mentions(llama_with(R"("rope_scaling": {"type": "dynamic", "factor": 2.0})"),
                        {"dynamic"});
  expect_error_mentions(
      llama_with(R"("rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4})"),
      {"longrope"});
  expect_error_mentions(llama_with(R"("rope_scaling": {"rope_type": "linear"})"),
                        {"factor", "linear"});
  expect_error_mentions(
      llama_with(R"("rope_scaling": {"rope_type": "llama3", "factor": 8, "high_freq_factor": 4})"),
      {"low_freq_factor"});
  expect_error_mentions(
      llama_with(R"("rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 4,
                    "high_freq_factor": 4})"),
      {"high_freq_factor"});
  expect_error_mentions(llama_with(R"("rope_theta": -1.0)"), {"rope_theta"});
  expect_error_mentions(llama_with(R"("partial_rotary_factor": 0.5)"), {"partial_rotary_factor"});
  expect_error_mentions(
      llama_with(
          R"("rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e4}})"),
      {"full_attention"});
}

TEST(ModelConfig, RejectsQwen2SlidingWindow) {
  expect_error_mentions(
      llama_with(R"("use_sliding_window": true, "sliding_window": 4096)", "Qwen2ForCausalLM"),
      {"use_sliding_window"});
  expect_error_mentions(
      llama_with(R"("layer_types": ["full_attention", "sliding_attention"])", "Qwen2ForCausalLM"),
      {"layer_types", "sliding_attention"});
}

TEST(ModelConfig, RejectsOtherBadFields) {
  expect_error_mentions(llama_with(R"("torch_dtype": "int8")"), {"torch_dtype", "int8"});
  expect_error_mentions(llama_with(R"("dtype": "float8")"), {"dtype", "float8"});
  expect_error_mentions(llama_with(R"("hidden_act": "gelu")"), {"hidden_act", "gelu"});
  expect_error_mentions(llama_with(R"("eos_token_id": "</s>")"), {"eos_token_id"});
  expect_error_mentions(llama_with(R"("eos_token_id": [1, "x"])"), {"eos_token_id"});
  expect_error_mentions(llama_with(R"("tie_word_embeddings": "yes")"), {"tie_word_embeddings"});
  expect_error_mentions(llama_with(R"("rms_norm_eps": 0)"), {"rms_norm_eps"});
  expect_error_mentions(llama_with(R"("sliding_window": -5)", "MistralForCausalLM"),
                        {"sliding_window"});
  expect_error_mentions("{not json", {"JSON"});
  expect_error_mentions("[1, 2]", {"object"});
}

TEST(ModelConfig, FromFile) {
  ScratchDir dir;
  {
    std::ofstream out(dir.file("config.json"));
    out << kLlama31New;
  }
  expect_llama31(ModelConfig::from_file(dir.file("config.json")));

  const std::string missing = dir.file("nope.json");
  EXPECT_NE(value_error_of([&] { ModelConfig::from_file(missing); }).find(missing),
            std::string::npos);

  {
    std::ofstream out(dir.file("bad.json"));
    out << llama_with(R"("vocab_size": -3)");
  }
  const std::string msg = value_error_of([&] { ModelConfig::from_file(dir.file("bad.json")); });
  EXPECT_NE(msg.find("bad.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("vocab_size"), std::string::npos) << msg;
}

}  // namespace
}  // namespace llmcore
