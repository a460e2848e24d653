// The Llama-family forward pass on the CPU backend: chunking and batching do not change the
// logits, and the paged, fused forward agrees with a naive single-sequence reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "llama_test_util.h"
#include "model/llama.h"
#include "model/safetensors.h"
#include "model_test_util.h"

namespace llmcore {
namespace {

using namespace testing_util;

constexpr int kBlockSize = 4;
constexpr int kNumBlocks = 16;
constexpr uint64_t kSeed = 1234;
const std::vector<int32_t> kPrompt = {3, 41, 7, 0, 19, 33, 12};

// 2 layers, GQA (4 query heads over 2 kv heads), head_dim 8.
std::string tiny_config(const std::string& arch, const std::string& extra = "") {
  std::string s = R"({"architectures": [")" + arch + R"("], "vocab_size": 50, "hidden_size": 32,
    "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0)";
  if (!extra.empty()) s += ", " + extra;
  return s + "}";
}

std::vector<int32_t> iota_rows(int n) {
  std::vector<int32_t> r(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) r[i] = i;
  return r;
}

// Runs the prompt in steps of the given sizes; returns the logits of every prompt position.
std::vector<std::vector<float>> run_chunked(Model& model, Backend& backend,
                                            const std::vector<int>& sizes,
                                            const std::vector<int32_t>& block_table) {
  KVCache kv = make_kv_cache(backend, model.config(), kNumBlocks, kBlockSize);
  std::vector<std::vector<float>> out;
  int done = 0;
  for (int n : sizes) {
    SeqChunk chunk{std::vector<int32_t>(kPrompt.begin() + done, kPrompt.begin() + done + n), done,
                   block_table, iota_rows(n)};
    const Tensor logits = model.forward(make_step({chunk}, kBlockSize), kv);
    EXPECT_EQ(logits.shape(), (Shape{n, model.config().vocab_size}));
    EXPECT_EQ(logits.dtype(), DType::kF32);
    for (auto& row : logits_rows(logits)) out.push_back(std::move(row));
    done += n;
  }
  return out;
}

TEST(LlamaForward, ChunkingDoesNotChangeLogits) {
  const ModelConfig c = ModelConfig::from_json_string(tiny_config("LlamaForCausalLM"));
  auto backend = create_cpu_backend(2);
  auto model = create_model(c, "/nonexistent", *backend, LoadFormat::kDummy, kSeed);
  // Blocks out of order, so a paging mistake reads the wrong keys.
  const std::vector<int32_t> table = {9, 2};
  const auto whole = run_chunked(*model, *backend, {7}, table);
  const auto chunks = run_chunked(*model, *backend, {3, 4}, table);
  const auto single = run_chunked(*model, *backend, {1, 1, 1, 1, 1, 1, 1}, table);
  ASSERT_EQ(whole.size(), 7u);
  ASSERT_EQ(chunks.size(), 7u);
  ASSERT_EQ(single.size(), 7u);
  // backend.h promises batch-invariant ops, so equal means bit-equal.
  for (size_t t = 0; t < 7; ++t) {
    EXPECT_EQ(whole[t], chunks[t]) << "position " << t;
    EXPECT_EQ(whole[t], single[t]) << "position " << t;
  }
  // Different positions see different contexts (a forward that ignored attention would not).
  EXPECT_NE(whole[5], whole[6]);
}

TEST(LlamaForward, BatchedSequencesMatchSeparateRuns) {
  const ModelConfig c = ModelConfig::from_json_string(tiny_config("LlamaForCausalLM"));
  auto backend = create_cpu_backend(2);
  auto model = create_model(c, "", *backend, LoadFormat::kDummy, kSeed);
  const std::vector<int32_t> other = {5, 6, 7, 8, 9};

  // Alone: the prompt in 5 + 2, the other sequence in 5.
  KVCache kv1 = make_kv_cache(*backend, c, kNumBlocks, kBlockSize);
  model->forward(make_step({{{kPrompt.begin(), kPrompt.begin() + 5}, 0, {1, 4}, {}}}, kBlockSize),
                 kv1);
  const auto alone_a = logits_rows(model->forward(
      make_step({{{kPrompt.begin() + 5, kPrompt.end()}, 5, {1, 4}, {0, 1}}}, kBlockSize), kv1));
  KVCache kv2 = make_kv_cache(*backend, c, kNumBlocks, kBlockSize);
  const auto alone_b =
      logits_rows(model->forward(make_step({{other, 0, {3, 0}, {4}}}, kBlockSize), kv2));

  // Together in one cache: the first step fills the prompt's cache only, the second mixes the
  // prompt's last two tokens with the other sequence's whole prefill.
  KVCache kv = make_kv_cache(*backend, c, kNumBlocks, kBlockSize);
  const Tensor none = model->forward(
      make_step({{{kPrompt.begin(), kPrompt.begin() + 5}, 0, {1, 4}, {}}}, kBlockSize), kv);
  EXPECT_EQ(none.dim(0), 0);
  const auto both = logits_rows(model->forward(
      make_step(
          {{other, 0, {3, 0}, {4}}, {{kPrompt.begin() + 5, kPrompt.end()}, 5, {1, 4}, {0, 1}}},
          kBlockSize),
      kv));
  ASSERT_EQ(both.size(), 3u);
  EXPECT_EQ(both[0], alone_b[0]);
  EXPECT_EQ(both[1], alone_a[0]);
  EXPECT_EQ(both[2], alone_a[1]);
}

// max |got - want| over all logits, relative to the largest |want|.
double max_relative_error(const std::vector<std::vector<float>>& got,
                          const std::vector<std::vector<double>>& want) {
  double err = 0, scale = 0;
  for (size_t t = 0; t < want.size(); ++t) {
    for (size_t v = 0; v < want[t].size(); ++v) {
      err = std::max(err, std::abs(got[t][v] - want[t][v]));
      scale = std::max(scale, std::abs(want[t][v]));
    }
  }
  return err / scale;
}

TEST(LlamaForward, DummyModelMatchesNaiveReference) {
  const ModelConfig c = ModelConfig::from_json_string(tiny_config("LlamaForCausalLM"));
  auto backend = create_cpu_backend(2);
  auto model = create_model(c, "", *backend, LoadFormat::kDummy, kSeed);
  std::map<std::string, Shape> shapes;
  for (const auto& s : hf_tensor_specs(c)) shapes[s.first] = s.second;
  const WeightReader read = [&](const std::string& name) {
    return to_doubles(dummy_weight(name, shapes.at(name), kSeed));
  };
  const auto want = reference_forward(c, read, kPrompt);
  const auto got = run_chunked(*model, *backend, {7}, {0, 1});
  const double err = max_relative_error(got, want);
  EXPECT_LT(err, 1e-4);
  RecordProperty("max_relative_error", str_cat(err));
  // The comparison is meaningful only if the logits are not all ~0.
  double scale = 0;
  for (const auto& row : want)
    for (double v : row) scale = std::max(scale, std::abs(v));
  EXPECT_GT(scale, 1e-2);
}

struct CheckpointCase {
  const char* label;
  std::string config_json;
  DType dtype;
};

void PrintTo(const CheckpointCase& c, std::ostream* os) { *os << c.label; }

// Writes `ckpt` to disk, loads it with kAuto (fusion, biases, tying, dtype conversion) and runs
// the prompt in 3 + 4 chunks, against the reference reading the same file.
void expect_checkpoint_matches_reference(const ModelConfig& c,
                                         const std::map<std::string, Tensor>& ckpt) {
  ScratchDir dir;
  write_safetensors(dir.file("model.safetensors"), ckpt);
  const WeightStore store = WeightStore::open(dir.path());
  const WeightReader read = [&](const std::string& name) { return to_doubles(store.get(name)); };
  const auto want = reference_forward(c, read, kPrompt);

  auto backend = create_cpu_backend(2);
  auto model = create_model(c, dir.path(), *backend, LoadFormat::kAuto, 0);
  const auto got = run_chunked(*model, *backend, {3, 4}, {5, 11});
  const double err = max_relative_error(got, want);
  EXPECT_LT(err, 1e-4);
  ::testing::Test::RecordProperty("max_relative_error", str_cat(err));
}

class LlamaCheckpointForward : public ::testing::TestWithParam<CheckpointCase> {};

TEST_P(LlamaCheckpointForward, MatchesNaiveReference) {
  const ModelConfig c = ModelConfig::from_json_string(GetParam().config_json);
  expect_checkpoint_matches_reference(c, random_checkpoint(c, GetParam().dtype, 77));
}

// q/k/v (and gate/up) parts in different dtypes are fused through float32.
TEST(LlamaForward, MixedDtypeFusionMatchesNaiveReference) {
  const ModelConfig c = ModelConfig::from_json_string(
      tiny_config("Qwen2ForCausalLM", R"("tie_word_embeddings": false)"));
  auto ckpt = random_checkpoint(c, DType::kF32, 5);
  const auto half = random_checkpoint(c, DType::kBF16, 6);
  for (const char* name :
       {"model.layers.1.self_attn.k_proj.weight", "model.layers.0.self_attn.v_proj.bias",
        "model.layers.0.mlp.up_proj.weight"}) {
    ckpt[name] = half.at(name);
  }
  expect_checkpoint_matches_reference(c, ckpt);
}

INSTANTIATE_TEST_SUITE_P(
    Variants, LlamaCheckpointForward,
    ::testing::Values(
        CheckpointCase{
            "llama_bias_f16",
            tiny_config("LlamaForCausalLM", R"("attention_bias": true, "mlp_bias": true)"),
            DType::kF16},
        CheckpointCase{
            "llama_linear_rope_tied_f32",
            tiny_config(
                "LlamaForCausalLM",
                R"("tie_word_embeddings": true, "rope_scaling": {"type": "linear", "factor": 2.0})"),
            DType::kF32},
        CheckpointCase{"qwen2_tied_bf16",
                       tiny_config("Qwen2ForCausalLM", R"("tie_word_embeddings": true)"),
                       DType::kBF16},
        CheckpointCase{"mistral_window3_f32",
                       tiny_config("MistralForCausalLM", R"("sliding_window": 3)"), DType::kF32}),
    [](const ::testing::TestParamInfo<CheckpointCase>& info) {
      return std::string(info.param.label);
    });

}  // namespace
}  // namespace llmcore
