// Loading Llama-family weights: the tensor list, dummy weights, and checkpoints that are
// missing tensors or carry the wrong shapes or dtypes erroring with the tensor's name.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "llama_test_util.h"
#include "model/llama.h"
#include "model/safetensors.h"
#include "model_test_util.h"

namespace llmcore {
namespace {

using namespace testing_util;

ModelConfig small_config(const std::string& extra = "",
                         const std::string& arch = "LlamaForCausalLM") {
  std::string s = R"({"architectures": [")" + arch + R"("], "vocab_size": 40, "hidden_size": 16,
    "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 32)";
  if (!extra.empty()) s += ", " + extra;
  return ModelConfig::from_json_string(s + "}");
}

TEST(LlamaWeights, SpecsListTheHfTensors) {
  for (const ModelConfig& c :
       {small_config(), small_config(R"("attention_bias": true, "mlp_bias": true)"),
        small_config(R"("tie_word_embeddings": true)", "Qwen2ForCausalLM")}) {
    std::set<std::pair<std::string, Shape>> want, got;
    for (const auto& s : hf_tensor_specs(c)) want.insert(s);
    for (const WeightSpec& s : llama_weight_specs(c)) got.insert({s.name, s.shape});
    EXPECT_EQ(got, want) << c.architecture;
  }
}

TEST(LlamaWeights, DummyWeightsAreSeededUniformWithStd002) {
  const Tensor a = dummy_weight("model.layers.0.mlp.up_proj.weight", {300, 400}, 7);
  const Tensor b = dummy_weight("model.layers.0.mlp.up_proj.weight", {300, 400}, 7);
  const Tensor other_seed = dummy_weight("model.layers.0.mlp.up_proj.weight", {300, 400}, 8);
  const Tensor other_name = dummy_weight("model.layers.1.mlp.up_proj.weight", {300, 400}, 7);
  ASSERT_EQ(a.dtype(), DType::kF32);
  ASSERT_EQ(a.shape(), (Shape{300, 400}));
  const std::vector<double> va = to_doubles(a);
  EXPECT_EQ(va, to_doubles(b));
  EXPECT_NE(va, to_doubles(other_seed));
  EXPECT_NE(va, to_doubles(other_name));
  double sum = 0, sum_sq = 0, max_abs = 0;
  for (double v : va) {
    sum += v;
    sum_sq += v * v;
    max_abs = std::max(max_abs, std::abs(v));
  }
  const double n = static_cast<double>(va.size());
  EXPECT_NEAR(sum / n, 0.0, 5e-4);
  EXPECT_NEAR(std::sqrt(sum_sq / n), 0.02, 5e-4);
  EXPECT_LE(max_abs, 0.02 * std::sqrt(3.0));
  EXPECT_GT(max_abs, 0.0345);  // the draws reach near the edge of [-0.0346, 0.0346]

  for (const char* norm : {"model.norm.weight", "model.layers.3.input_layernorm.weight",
                           "model.layers.3.post_attention_layernorm.weight"}) {
    for (double v : to_doubles(dummy_weight(norm, {64}, 7))) ASSERT_EQ(v, 1.0) << norm;
  }
}

TEST(LlamaLoad, DummyReadsNoFiles) {
  auto backend = create_cpu_backend(1);
  const ModelConfig c = small_config();
  auto model = create_model(c, "/definitely/not/here", *backend, LoadFormat::kDummy, 3);
  EXPECT_EQ(model->config().hidden_size, 16);
}

TEST(LlamaLoad, UnknownArchitectureIsRejected) {
  auto backend = create_cpu_backend(1);
  ModelConfig c = small_config();
  c.architecture = "GPTNeoXForCausalLM";
  const std::string msg =
      value_error_of([&] { create_model(c, "", *backend, LoadFormat::kDummy, 0); });
  EXPECT_NE(msg.find("GPTNeoXForCausalLM"), std::string::npos) << msg;
  EXPECT_NE(msg.find("LlamaForCausalLM"), std::string::npos) << msg;
}

TEST(LlamaLoad, MissingDirectoryNamesIt) {
  auto backend = create_cpu_backend(1);
  const std::string msg = value_error_of(
      [&] { create_model(small_config(), "/no/such/model", *backend, LoadFormat::kAuto, 0); });
  EXPECT_NE(msg.find("/no/such/model"), std::string::npos) << msg;
}

// Loads `tensors` written as a checkpoint; returns the ValueError message ("" if it loaded).
std::string load_error(const ModelConfig& c, const std::map<std::string, Tensor>& tensors) {
  ScratchDir dir;
  write_safetensors(dir.file("model.safetensors"), tensors);
  auto backend = create_cpu_backend(1);
  try {
    create_model(c, dir.path(), *backend, LoadFormat::kAuto, 0);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kValue) << e.what();
    return e.what();
  }
  return "";
}

void expect_mentions(const std::string& msg, std::initializer_list<std::string> parts) {
  EXPECT_FALSE(msg.empty()) << "expected a load error";
  for (const std::string& p : parts)
    EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
}

TEST(LlamaLoad, CompleteCheckpointLoads) {
  const ModelConfig c = small_config(R"("attention_bias": true, "mlp_bias": true)");
  EXPECT_EQ(load_error(c, random_checkpoint(c, DType::kBF16, 1)), "");
}

TEST(LlamaLoad, MissingTensorIsNamed) {
  const ModelConfig c = small_config();
  auto ckpt = random_checkpoint(c, DType::kF32, 1);
  ckpt.erase("model.layers.1.mlp.up_proj.weight");
  expect_mentions(load_error(c, ckpt), {"model.layers.1.mlp.up_proj.weight", "[24, 16]"});
}

TEST(LlamaLoad, MissingBiasIsNamed) {
  const ModelConfig c = small_config(R"("attention_bias": true)");
  auto ckpt = random_checkpoint(c, DType::kF32, 1);
  ckpt.erase("model.layers.0.self_attn.o_proj.bias");
  expect_mentions(load_error(c, ckpt), {"model.layers.0.self_attn.o_proj.bias", "[16]"});
}

TEST(LlamaLoad, WrongShapeIsNamedWithBothShapes) {
  const ModelConfig c = small_config();
  auto ckpt = random_checkpoint(c, DType::kF32, 1);
  // k_proj is [Hkv * D, Hd] = [8, 16].
  ckpt["model.layers.0.self_attn.k_proj.weight"] = Tensor::empty({9, 16}, DType::kF32);
  expect_mentions(load_error(c, ckpt),
                  {"model.layers.0.self_attn.k_proj.weight", "[9, 16]", "[8, 16]"});

  ckpt = random_checkpoint(c, DType::kF32, 1);
  ckpt["model.norm.weight"] = Tensor::empty({1, 16}, DType::kF32);
  expect_mentions(load_error(c, ckpt), {"model.norm.weight", "[1, 16]", "[16]"});
}

TEST(LlamaLoad, NonFloatTensorIsNamed) {
  const ModelConfig c = small_config();
  auto ckpt = random_checkpoint(c, DType::kF32, 1);
  ckpt["model.layers.1.input_layernorm.weight"] = Tensor::empty({16}, DType::kI32);
  expect_mentions(load_error(c, ckpt), {"model.layers.1.input_layernorm.weight", "int32"});
}

TEST(LlamaLoad, LmHeadRequiredUnlessTied) {
  const ModelConfig untied = small_config();
  auto ckpt = random_checkpoint(untied, DType::kF32, 1);
  ckpt.erase("lm_head.weight");
  expect_mentions(load_error(untied, ckpt), {"lm_head.weight", "[40, 16]"});

  // Tied: lm_head.weight is not read, so its absence (or a stray one) does not matter.
  const ModelConfig tied = small_config(R"("tie_word_embeddings": true)");
  EXPECT_EQ(load_error(tied, ckpt), "");
  ckpt["lm_head.weight"] = Tensor::empty({3, 3}, DType::kF32);
  EXPECT_EQ(load_error(tied, ckpt), "");
}

TEST(LlamaLoad, Qwen2NeedsQkvBiases) {
  const ModelConfig qwen = small_config("", "Qwen2ForCausalLM");
  auto ckpt = random_checkpoint(small_config(), DType::kF32, 1);  // a Llama checkpoint: no biases
  expect_mentions(load_error(qwen, ckpt), {"model.layers.0.self_attn.q_proj.bias", "[16]"});
}

}  // namespace
}  // namespace llmcore
