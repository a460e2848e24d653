// CUDA paged attention against the CPU reference backend on the same values (16-bit data
// converted to float32 for the CPU): head dims, GQA ratios, block sizes, sliding windows,
// mixed batches (prefill, chunks after cached context, decode), long split-K contexts, a wide
// decode batch, and keys planted at partition and window edges.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/test_cuda_attention_util.h"

namespace llmcore {
namespace {

using namespace attn_test;

// (context, query) pairs: a fresh prefill; decodes ending mid-block, on block edges and past
// one or more 512-key partitions (split-K); a chunk after cached context that crosses a
// partition edge; short chunks; a single-token prompt.
std::vector<std::pair<int, int>> mixed_specs() {
  return {{0, 40}, {37, 1}, {20, 13}, {1000, 1}, {460, 90}, {63, 1}, {5, 9},
          {1535, 1}, {2047, 1}, {0, 1}, {511, 1}, {512, 1}, {130, 70}};
}

Problem make_mixed(const AttnShape& shape, int block_size, DType dtype, uint32_t seed,
                   std::vector<SeqData>& store) {
  std::mt19937 rng(seed);
  const std::vector<std::pair<int, int>> specs = mixed_specs();
  store.clear();
  store.reserve(specs.size());
  std::vector<StepSeq> seqs;
  for (const auto& [ctx, q] : specs) {
    store.push_back(make_seq(shape, ctx + q, dtype, rng));
    seqs.push_back({&store.back(), ctx, q});
  }
  return make_problem(shape, block_size, dtype, seqs, rng);
}

// (head_dim, GQA ratio Hq/Hkv, block size, sliding window)
class CudaPagedAttention : public ::testing::TestWithParam<std::tuple<int, int, int, int>> {};

TEST_P(CudaPagedAttention, MatchesCpuReferenceOnMixedBatch) {
  ATTN_SKIP_WITHOUT_CUDA();
  const auto [head_dim, group, block_size, window] = GetParam();
  const AttnShape shape{2 * group, 2, head_dim};
  std::vector<SeqData> store;
  const Problem p = make_mixed(shape, block_size, DType::kBF16,
                               head_dim * 1000 + group * 100 + block_size + window, store);
  expect_close(p, default_scale(shape), window);
}

std::string case_name(const ::testing::TestParamInfo<std::tuple<int, int, int, int>>& info) {
  return "D" + std::to_string(std::get<0>(info.param)) + "_gqa" +
         std::to_string(std::get<1>(info.param)) + "_bs" + std::to_string(std::get<2>(info.param)) +
         "_window" + std::to_string(std::get<3>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Bf16, CudaPagedAttention,
                         ::testing::Combine(::testing::Values(64, 128), ::testing::Values(1, 4, 8),
                                            ::testing::Values(16, 32), ::testing::Values(0, 100)),
                         case_name);

TEST(CudaPagedAttentionShapes, OtherHeadDimsBlockSizesAndFp16) {
  ATTN_SKIP_WITHOUT_CUDA();
  // (head_dim, Hq, Hkv, block size, window, dtype): the remaining head dims, block sizes 8, 64
  // and 128, odd GQA ratios (3, 6), and float16.
  const std::vector<std::tuple<int, int, int, int, int, DType>> cases = {
      {32, 4, 2, 16, 0, DType::kBF16},  {96, 6, 2, 16, 0, DType::kBF16},
      {256, 4, 2, 16, 0, DType::kBF16}, {256, 8, 1, 32, 300, DType::kBF16},
      {128, 8, 2, 8, 0, DType::kBF16},  {64, 6, 1, 8, 50, DType::kBF16},
      {128, 3, 1, 16, 0, DType::kBF16}, {64, 8, 2, 16, 0, DType::kF16},
      {128, 4, 4, 32, 100, DType::kF16}, {96, 2, 1, 16, 0, DType::kF16},
      // Blocks of 64 and 128 keys: the prompt kernel's TMA boxes cover a whole 64-key tile.
      {128, 8, 2, 64, 0, DType::kBF16}, {128, 4, 1, 128, 100, DType::kBF16},
      {128, 8, 8, 64, 0, DType::kF16},  {64, 4, 2, 128, 0, DType::kBF16},
  };
  uint32_t seed = 1;
  for (const auto& [d, hq, hkv, bs, window, dtype] : cases) {
    SCOPED_TRACE("D " + std::to_string(d) + " Hq " + std::to_string(hq) + " Hkv " +
                 std::to_string(hkv) + " BS " + std::to_string(bs) + " window " +
                 std::to_string(window) + " " + dtype_name(dtype));
    const AttnShape shape{hq, hkv, d};
    std::vector<SeqData> store;
    const Problem p = make_mixed(shape, bs, dtype, seed++, store);
    expect_close(p, default_scale(shape), window);
  }
}

TEST(CudaPagedAttentionLong, DecodeContextsUpTo8192) {
  ATTN_SKIP_WITHOUT_CUDA();
  // Decode rows on both sides of every partition edge, up to 8192 keys (16 partitions), plus a
  // prefill chunk deep into a long cached context; full attention and a window spanning
  // several partitions.
  const AttnShape shape{16, 4, 128};
  const std::vector<std::pair<int, int>> specs = {
      {0, 1},    {1, 1},    {16, 1},    {510, 1},  {511, 1},  {512, 1},  {1022, 1},
      {1023, 1}, {1024, 1}, {2999, 1},  {4096, 1}, {4097, 1}, {8190, 1}, {8191, 1},
      {7000, 50}, {6143, 1}, {777, 1}};
  for (int window : {0, 1500}) {
    SCOPED_TRACE("window " + std::to_string(window));
    std::mt19937 rng(77 + window);
    std::vector<SeqData> store;
    store.reserve(specs.size());
    std::vector<StepSeq> seqs;
    for (const auto& [ctx, q] : specs) {
      store.push_back(make_seq(shape, ctx + q, DType::kBF16, rng));
      seqs.push_back({&store.back(), ctx, q});
    }
    const Problem p = make_problem(shape, 16, DType::kBF16, seqs, rng);
    expect_close(p, default_scale(shape), window);
  }
}

TEST(CudaPagedAttentionLong, WideDecodeBatch) {
  ATTN_SKIP_WITHOUT_CUDA();
  // 256 decode rows with random contexts in [1, 2048], GQA 8, block 32.
  const AttnShape shape{8, 1, 128};
  std::mt19937 rng(256);
  std::uniform_int_distribution<int> len(1, 2048);
  std::vector<SeqData> store;
  store.reserve(256);
  std::vector<StepSeq> seqs;
  for (int s = 0; s < 256; ++s) {
    const int n = len(rng);
    store.push_back(make_seq(shape, n, DType::kBF16, rng));
    seqs.push_back({&store.back(), n - 1, 1});
  }
  const Problem p = make_problem(shape, 32, DType::kBF16, seqs, rng);
  expect_close(p, default_scale(shape), 0);
  expect_close(p, default_scale(shape), 700);
}

TEST(CudaPagedAttentionLong, PlantedKeysAtPartitionAndWindowEdges) {
  ATTN_SKIP_WITHOUT_CUDA();
  // Each sequence plants one dominant key for its first query head (add_spike). A key at the
  // first or last position of a partition, at the window's first key, or the query's own
  // position must carry nearly all the weight; a key one before the window or one after the
  // query (inside a prefill chunk) must carry none. Missing or extra keys then move the output
  // by ~0.5, far outside the tolerance.
  const AttnShape shape{8, 2, 128};
  const int window = 700;
  struct Case {
    int ctx, q, spike_key, spike_query;  // spike relative: query index within the step
  };
  const std::vector<Case> cases = {
      {1200, 1, 0, 0},    {1200, 1, 511, 0},  {1200, 1, 512, 0},  {1200, 1, 1023, 0},
      {1200, 1, 1024, 0}, {1200, 1, 1200, 0}, {3000, 1, 2047, 0}, {3000, 1, 2048, 0},
      {600, 40, 599, 0},  {600, 40, 512, 39}, {0, 64, 31, 30},    {0, 64, 63, 63},
  };
  for (int w : {0, window}) {
    SCOPED_TRACE("window " + std::to_string(w));
    std::mt19937 rng(4242 + w);
    std::vector<SeqData> store;
    store.reserve(cases.size() + 4);
    std::vector<StepSeq> seqs;
    for (const Case& c : cases) {
      store.push_back(make_seq(shape, c.ctx + c.q, DType::kBF16, rng));
      add_spike(store.back(), shape, c.spike_key, c.ctx + c.spike_query, 0);
      seqs.push_back({&store.back(), c.ctx, c.q});
    }
    if (w > 0) {
      // Decode at 2000 sees keys [1301, 2000]: plant at the window's first key and one before.
      for (int key : {1301, 1300, 1536, 1535}) {
        store.push_back(make_seq(shape, 2001, DType::kBF16, rng));
        add_spike(store.back(), shape, key, 2000, 0);
        seqs.push_back({&store.back(), 2000, 1});
      }
    }
    const Problem p = make_problem(shape, 16, DType::kBF16, seqs, rng);
    expect_close(p, default_scale(shape), w);
  }
}

TEST(CudaPagedAttentionEdges, TinyAndHugeWindowsAndLargeScores) {
  ATTN_SKIP_WITHOUT_CUDA();
  const AttnShape shape{4, 2, 64};
  std::mt19937 rng(11);
  std::vector<SeqData> store;
  store.reserve(4);
  std::vector<StepSeq> seqs;
  const std::vector<std::pair<int, int>> specs = {{0, 33}, {900, 1}, {50, 20}, {0, 1}};
  for (const auto& [ctx, q] : specs) {
    store.push_back(make_seq(shape, ctx + q, DType::kBF16, rng));
    seqs.push_back({&store.back(), ctx, q});
  }
  const Problem p = make_problem(shape, 16, DType::kBF16, seqs, rng);
  // Window 1: each query sees only itself, so the output is exactly its own v (rounded).
  expect_close(p, default_scale(shape), 1);
  // A window longer than every context is full attention.
  expect_close(p, default_scale(shape), 100000);
  // Scores in the hundreds: exp overflows unless the running max is subtracted.
  expect_close(p, 8.0f, 0);
}

TEST(CudaPagedAttentionEdges, WindowOneReturnsOwnValue) {
  ATTN_SKIP_WITHOUT_CUDA();
  // Independent of the CPU backend: with a window of 1 every output row equals the value
  // vector at its own position, bit for bit (a weight of exactly 1 on one bf16 value).
  const AttnShape shape{4, 2, 64};
  std::mt19937 rng(3);
  SeqData a = make_seq(shape, 700, DType::kBF16, rng);
  SeqData b = make_seq(shape, 40, DType::kBF16, rng);
  const Problem p = make_problem(shape, 16, DType::kBF16, {{&a, 699, 1}, {&b, 10, 30}}, rng);
  const std::vector<float> out = run_gpu(p, default_scale(shape), 1);
  int t = 0;
  for (const StepSeq& s : p.seqs)
    for (int i = 0; i < s.query_len; ++i, ++t)
      for (int h = 0; h < shape.num_heads; ++h)
        for (int x = 0; x < shape.head_dim; ++x) {
          const int pos = s.context_len + i, kvh = h / 2;
          const float want = s.data->v[(static_cast<size_t>(pos) * 2 + kvh) * 64 + x];
          ASSERT_EQ(out[(static_cast<size_t>(t) * 4 + h) * 64 + x], want)
              << "token " << t << " head " << h << " dim " << x;
        }
}

// Block ids outside [0, NB) in the part of a table the kernel reads must never be dereferenced:
// the rows of that sequence come out NaN, and every other sequence's rows keep their exact bits.
// Head dim 64 walks in one kernel; head dim 128 has the prompt kernel of its own.
void check_bad_block_ids(const AttnShape& shape) {
  std::mt19937 rng(99);
  std::vector<SeqData> store;
  store.reserve(4);
  std::vector<StepSeq> seqs;
  const std::vector<std::pair<int, int>> specs = {{100, 1}, {1000, 1}, {40, 20}, {700, 1}};
  for (const auto& [ctx, q] : specs) {
    store.push_back(make_seq(shape, ctx + q, DType::kBF16, rng));
    seqs.push_back({&store.back(), ctx, q});
  }
  Problem p = make_problem(shape, 16, DType::kBF16, seqs, rng);
  const std::vector<float> clean = run_gpu(p, default_scale(shape), 0);
  ASSERT_EQ(compare(clean, run_cpu(p, default_scale(shape), 0)).non_finite, 0);

  Tensor tables = to_host(p.meta_dev.block_tables);  // [S, max_blocks]
  int32_t* t = tables.data_as<int32_t>();
  const int64_t width = tables.dim(1), num_blocks = p.k_cache.dim(0);
  t[0 * width + 2] = 99999;                          // walking decode
  t[1 * width + 40] = -7;                            // split decode, partition 1
  t[2 * width + 1] = static_cast<int32_t>(num_blocks);  // prefill chunk
  p.meta_dev.block_tables = to_device(tables);
  const std::vector<float> bad = run_gpu(p, default_scale(shape), 0);

  const int w = shape.num_heads * shape.head_dim;
  int token = 0;
  for (int s = 0; s < 4; ++s) {
    const std::vector<float> got = rows(bad, shape, token, seqs[s].query_len);
    if (s < 3) {
      for (size_t i = 0; i < got.size(); ++i)
        ASSERT_TRUE(std::isnan(got[i])) << "sequence " << s << " element " << i << " of " << w;
    } else {
      EXPECT_TRUE(same_bits(got, rows(clean, shape, token, seqs[s].query_len)));
    }
    token += seqs[s].query_len;
  }
}

TEST(CudaPagedAttentionEdges, BadBlockIdsPoisonOnlyTheirSequence) {
  ATTN_SKIP_WITHOUT_CUDA();
  check_bad_block_ids({8, 2, 64});
  check_bad_block_ids({8, 2, 128});
}

}  // namespace
}  // namespace llmcore
