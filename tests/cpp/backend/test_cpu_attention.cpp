// CPU paged attention against a contiguous-KV double-precision reference, over head dims, GQA
// ratios, block sizes, sliding windows and mixed batches (prefill, chunk continuation, decode)
// with shuffled block ids; plus bitwise invariance to chunking, batching and thread count.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "backend/backend.h"
#include "backend/backend_test_util.h"

namespace llmcore {
namespace {

using testing::f32;
using testing::i32;
using testing::int_tensor;
using testing::poisoned_f32;
using testing::random_f32;

struct SeqSpec {
  int context_len;  // tokens already cached before this step
  int query_len;    // tokens computed in this step
  int seq_len() const { return context_len + query_len; }
};

// One attention problem: a step over several sequences whose whole context (this step's tokens
// included) is already in a paged cache, plus the same keys and values stored contiguously.
struct AttnProblem {
  AttnShape shape;
  int block_size = 0;
  std::vector<SeqSpec> seqs;
  Tensor qkv;                                    // [T, (Hq + 2 Hkv) * D]
  std::vector<std::vector<float>> k_seq, v_seq;  // per sequence: [seq_len, Hkv, D]
  Tensor k_cache, v_cache;                       // [NB, Hkv, BS, D], NaN outside used slots
  AttentionMetadata meta;
  int num_tokens = 0;
};

// Blocks come from a shuffled permutation of the pool, so a sequence's blocks are neither
// contiguous nor ordered; spare blocks and the unused tail of each last block stay NaN.
AttnProblem make_problem(const AttnShape& shape, int block_size, std::vector<SeqSpec> seqs,
                         std::mt19937& rng) {
  AttnProblem p;
  p.shape = shape;
  p.block_size = block_size;
  p.seqs = std::move(seqs);
  const int num_seqs = static_cast<int>(p.seqs.size());
  const int hkv = shape.num_kv_heads, d = shape.head_dim;

  int max_blocks = 0, total_blocks = 0, max_q = 0, max_len = 0;
  std::vector<int32_t> start = {0}, lens;
  for (const SeqSpec& s : p.seqs) {
    const int n = (s.seq_len() + block_size - 1) / block_size;
    max_blocks = std::max(max_blocks, n);
    total_blocks += n;
    max_q = std::max(max_q, s.query_len);
    max_len = std::max(max_len, s.seq_len());
    start.push_back(start.back() + s.query_len);
    lens.push_back(s.seq_len());
  }
  p.num_tokens = start.back();
  const int num_blocks = total_blocks + 5;
  std::vector<int32_t> pool(num_blocks);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);

  max_blocks += 1;  // a -1 padded column past every table's end
  std::vector<int32_t> tables(static_cast<size_t>(num_seqs * max_blocks), -1);
  p.k_cache = poisoned_f32({num_blocks, hkv, block_size, d});
  p.v_cache = poisoned_f32({num_blocks, hkv, block_size, d});
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  size_t next = 0;
  for (int s = 0; s < num_seqs; ++s) {
    const int len = p.seqs[s].seq_len();
    for (int b = 0; b * block_size < len; ++b) tables[s * max_blocks + b] = pool[next++];
    p.k_seq.emplace_back(static_cast<size_t>(len) * hkv * d);
    p.v_seq.emplace_back(static_cast<size_t>(len) * hkv * d);
    for (float& x : p.k_seq.back()) x = dist(rng);
    for (float& x : p.v_seq.back()) x = dist(rng);
    for (int j = 0; j < len; ++j) {
      const int64_t block = tables[s * max_blocks + j / block_size];
      for (int h = 0; h < hkv; ++h)
        for (int i = 0; i < d; ++i) {
          const int64_t at = ((block * hkv + h) * block_size + j % block_size) * d + i;
          const size_t from = (static_cast<size_t>(j) * hkv + h) * d + i;
          f32(p.k_cache)[at] = p.k_seq[s][from];
          f32(p.v_cache)[at] = p.v_seq[s][from];
        }
    }
  }
  // Queries spread over [-4, 4) so the softmax is far from uniform.
  p.qkv = random_f32({p.num_tokens, shape.qkv_width()}, rng, -4.0f, 4.0f);

  p.meta.num_seqs = num_seqs;
  p.meta.max_query_len = max_q;
  p.meta.max_seq_len = max_len;
  p.meta.query_start_loc = int_tensor(start);
  p.meta.seq_lens = int_tensor(lens);
  p.meta.block_tables = int_tensor(tables).view({num_seqs, max_blocks});
  p.meta.slot_mapping = int_tensor(std::vector<int32_t>(p.num_tokens, -1));
  return p;
}

// out [T, Hq * D] in double, from the contiguous keys and values.
std::vector<double> reference_attention(const AttnProblem& p, double scale, int window) {
  const int hq = p.shape.num_heads, hkv = p.shape.num_kv_heads, d = p.shape.head_dim;
  const int group = hq / hkv, width = p.shape.qkv_width();
  std::vector<double> out(static_cast<size_t>(p.num_tokens) * hq * d);
  int t = 0;
  for (size_t s = 0; s < p.seqs.size(); ++s) {
    for (int i = 0; i < p.seqs[s].query_len; ++i, ++t) {
      const int pos = p.seqs[s].context_len + i;
      const int first = window > 0 ? std::max(0, pos - window + 1) : 0;
      for (int h = 0; h < hq; ++h) {
        const float* q = f32(p.qkv) + static_cast<int64_t>(t) * width + h * d;
        const int kvh = h / group;
        std::vector<double> w;
        double max_score = -INFINITY;
        for (int j = first; j <= pos; ++j) {
          const float* k = p.k_seq[s].data() + (static_cast<size_t>(j) * hkv + kvh) * d;
          double dot = 0.0;
          for (int x = 0; x < d; ++x) dot += double(q[x]) * k[x];
          w.push_back(dot * scale);
          max_score = std::max(max_score, w.back());
        }
        double denom = 0.0;
        for (double& x : w) denom += (x = std::exp(x - max_score));
        for (int x = 0; x < d; ++x) {
          double acc = 0.0;
          for (int j = first; j <= pos; ++j)
            acc += w[j - first] * p.v_seq[s][(static_cast<size_t>(j) * hkv + kvh) * d + x];
          out[(static_cast<size_t>(t) * hq + h) * d + x] = acc / denom;
        }
      }
    }
  }
  return out;
}

Tensor run_attention(Backend& be, const AttnProblem& p, float scale, int window) {
  Tensor out = poisoned_f32({p.num_tokens, p.shape.num_heads * p.shape.head_dim});
  be.paged_attention(out, p.qkv, p.k_cache, p.v_cache, p.meta, p.shape, scale, window);
  return out;
}

// A fresh prefill, a decode token, a chunk continuing after cached context, long decodes
// crossing block boundaries, and a short chunk: lengths that end mid-block and on block edges.
const std::vector<SeqSpec> kMixedBatch = {{0, 40}, {37, 1}, {20, 13}, {100, 1}, {63, 1}, {5, 9}};

// (head_dim, GQA ratio Hq/Hkv, block size, sliding window)
class PagedAttention : public ::testing::TestWithParam<std::tuple<int, int, int, int>> {};

TEST_P(PagedAttention, MatchesContiguousReference) {
  const auto [head_dim, group, block_size, window] = GetParam();
  const AttnShape shape{2 * group, 2, head_dim};
  std::mt19937 rng(head_dim * 1000 + group * 100 + block_size + window);
  const AttnProblem p = make_problem(shape, block_size, kMixedBatch, rng);
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  auto be = create_cpu_backend(2);
  const Tensor out = run_attention(*be, p, scale, window);
  const std::vector<double> ref = reference_attention(p, scale, window);
  EXPECT_LT(testing::max_scaled_error(f32(out), ref), 2e-6);
}

std::string attention_case_name(
    const ::testing::TestParamInfo<std::tuple<int, int, int, int>>& info) {
  return "D" + std::to_string(std::get<0>(info.param)) + "_gqa" +
         std::to_string(std::get<1>(info.param)) + "_bs" + std::to_string(std::get<2>(info.param)) +
         "_window" + std::to_string(std::get<3>(info.param));
}

INSTANTIATE_TEST_SUITE_P(CpuBackend, PagedAttention,
                         ::testing::Combine(::testing::Values(64, 128), ::testing::Values(1, 4, 8),
                                            ::testing::Values(16, 32), ::testing::Values(0, 24)),
                         attention_case_name);

TEST(CpuPagedAttention, WindowChangesTheResult) {
  // Guards the reference itself: with a window shorter than the context, windowed and full
  // attention must differ, so the windowed comparison above tests something.
  std::mt19937 rng(5);
  const AttnProblem p = make_problem({4, 2, 64}, 16, {{60, 2}}, rng);
  auto be = create_cpu_backend(2);
  const Tensor full = run_attention(*be, p, 0.125f, 0);
  const Tensor windowed = run_attention(*be, p, 0.125f, 24);
  EXPECT_FALSE(testing::same_bits(full, windowed));
  EXPECT_LT(testing::max_scaled_error(f32(windowed), reference_attention(p, 0.125, 24)), 2e-6);
}

TEST(CpuPagedAttention, LargeScoresStayFinite) {
  // Scores in the thousands overflow exp() unless the running maximum is subtracted first.
  std::mt19937 rng(9);
  const AttnProblem p = make_problem({4, 2, 64}, 16, {{30, 3}, {0, 7}}, rng);
  auto be = create_cpu_backend(2);
  const Tensor out = run_attention(*be, p, 50.0f, 0);
  EXPECT_LT(testing::max_scaled_error(f32(out), reference_attention(p, 50.0, 0)), 2e-6);
}

TEST(CpuPagedAttention, BitsDoNotDependOnThreadCount) {
  std::mt19937 rng(6);
  const AttnProblem p = make_problem({8, 2, 128}, 16, kMixedBatch, rng);
  auto one = create_cpu_backend(1);
  const Tensor want = run_attention(*one, p, 0.09f, 0);
  for (int threads : {2, 5}) {
    auto be = create_cpu_backend(threads);
    EXPECT_TRUE(testing::same_bits(run_attention(*be, p, 0.09f, 0), want)) << threads;
  }
}

// A 40-token prompt prefilled in one step, and again as chunks of 15, 15 and 10 tokens, each
// chunk batched with a decode step of another sequence. The KV cache is filled by
// write_kv_cache as the engine does; the prompt's outputs must be bit-identical.
void check_chunking_invariance(const AttnShape& shape, int block_size, int window) {
  std::mt19937 rng(7 + window);
  const int prompt_len = 40, other_len = 50, num_blocks = 16;
  const int width = shape.qkv_width(), hq_d = shape.num_heads * shape.head_dim;
  const Tensor prompt_qkv = random_f32({prompt_len, width}, rng, -3.0f, 3.0f);
  const Tensor other_qkv = random_f32({other_len, width}, rng, -3.0f, 3.0f);
  // Shuffled, non-contiguous blocks: the prompt owns the first three ids, the other sequence
  // the next four.
  std::vector<int32_t> ids(num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  const int max_blocks = 4;
  auto slot = [&](int seq, int pos) {
    return ids[seq * 3 + pos / block_size] * block_size + pos % block_size;
  };
  auto table_row = [&](int seq, int len) {
    std::vector<int32_t> row(max_blocks, -1);
    for (int b = 0; b * block_size < len; ++b) row[b] = ids[seq * 3 + b];
    return row;
  };
  auto be = create_cpu_backend(3);
  const float scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));

  // Runs one step over the given sequences: (qkv rows, their seq index, context before them).
  struct Part {
    Tensor rows;
    int seq;
    int context;
  };
  auto step = [&](Tensor& k_cache, Tensor& v_cache, const std::vector<Part>& parts) {
    int num_tokens = 0;
    for (const Part& part : parts) num_tokens += static_cast<int>(part.rows.dim(0));
    Tensor qkv = Tensor::empty({num_tokens, width}, DType::kF32);
    std::vector<int32_t> start = {0}, lens, slots, tables;
    int max_q = 0, max_len = 0;
    for (const Part& part : parts) {
      const int n = static_cast<int>(part.rows.dim(0));
      std::memcpy(f32(qkv) + static_cast<int64_t>(start.back()) * width, f32(part.rows),
                  part.rows.nbytes());
      for (int i = 0; i < n; ++i) slots.push_back(slot(part.seq, part.context + i));
      const std::vector<int32_t> row = table_row(part.seq, part.context + n);
      tables.insert(tables.end(), row.begin(), row.end());
      start.push_back(start.back() + n);
      lens.push_back(part.context + n);
      max_q = std::max(max_q, n);
      max_len = std::max(max_len, part.context + n);
    }
    AttentionMetadata meta;
    meta.num_seqs = static_cast<int>(parts.size());
    meta.max_query_len = max_q;
    meta.max_seq_len = max_len;
    meta.query_start_loc = int_tensor(start);
    meta.seq_lens = int_tensor(lens);
    meta.block_tables = int_tensor(tables).view({meta.num_seqs, max_blocks});
    meta.slot_mapping = int_tensor(slots);
    be->write_kv_cache(qkv, k_cache, v_cache, meta.slot_mapping, shape);
    Tensor out = poisoned_f32({num_tokens, hq_d});
    be->paged_attention(out, qkv, k_cache, v_cache, meta, shape, scale, window);
    return out;
  };
  const Shape cache_shape = {num_blocks, shape.num_kv_heads, block_size, shape.head_dim};

  // One step: the whole prompt alone.
  Tensor k1 = poisoned_f32(cache_shape), v1 = poisoned_f32(cache_shape);
  const Tensor whole = step(k1, v1, {{prompt_qkv, 0, 0}});

  // Three chunks; the other sequence's prefix is written first, then it decodes alongside.
  Tensor k2 = poisoned_f32(cache_shape), v2 = poisoned_f32(cache_shape);
  step(k2, v2, {{other_qkv.narrow_rows(0, 47), 1, 0}});
  Tensor chunked = poisoned_f32({prompt_len, hq_d});
  int done = 0, other_done = 47;
  for (int chunk : {15, 15, 10}) {
    // The decode row goes first so the prompt's rows sit at shifted batch positions.
    const Tensor out = step(k2, v2,
                            {{other_qkv.narrow_rows(other_done, 1), 1, other_done},
                             {prompt_qkv.narrow_rows(done, chunk), 0, done}});
    std::memcpy(f32(chunked) + static_cast<int64_t>(done) * hq_d, f32(out) + hq_d,
                static_cast<size_t>(chunk) * hq_d * sizeof(float));
    done += chunk;
    ++other_done;
  }
  EXPECT_TRUE(testing::same_bits(whole, chunked))
      << "D=" << shape.head_dim << " Hq=" << shape.num_heads << " window=" << window;
  for (int64_t i = 0; i < whole.numel(); ++i) ASSERT_TRUE(std::isfinite(f32(whole)[i]));
}

TEST(CpuPagedAttention, ChunkedPrefillIsBitIdentical) {
  check_chunking_invariance({4, 1, 128}, 16, 0);
  check_chunking_invariance({8, 2, 64}, 32, 0);
  check_chunking_invariance({8, 1, 64}, 16, 12);
}

TEST(CpuPagedAttention, RejectsInconsistentMetadata) {
  std::mt19937 rng(8);
  auto be = create_cpu_backend(1);
  const AttnShape shape{4, 2, 64};
  {  // a block id inside the context that is -1
    AttnProblem p = make_problem(shape, 16, {{30, 2}}, rng);
    i32(p.meta.block_tables)[1] = -1;
    EXPECT_THROW(run_attention(*be, p, 0.1f, 0), Error);
  }
  {  // a block id past the cache
    AttnProblem p = make_problem(shape, 16, {{30, 2}}, rng);
    i32(p.meta.block_tables)[0] = static_cast<int32_t>(p.k_cache.dim(0));
    EXPECT_THROW(run_attention(*be, p, 0.1f, 0), Error);
  }
  {  // query longer than the context
    AttnProblem p = make_problem(shape, 16, {{0, 5}}, rng);
    i32(p.meta.seq_lens)[0] = 4;
    EXPECT_THROW(run_attention(*be, p, 0.1f, 0), Error);
  }
  {  // query_start_loc not covering the step's tokens
    AttnProblem p = make_problem(shape, 16, {{3, 5}}, rng);
    i32(p.meta.query_start_loc)[1] = 4;
    EXPECT_THROW(run_attention(*be, p, 0.1f, 0), Error);
  }
  {  // seq_len larger than the block table can hold
    AttnProblem p = make_problem(shape, 16, {{3, 5}}, rng);
    i32(p.meta.seq_lens)[0] = 16 * static_cast<int32_t>(p.meta.block_tables.dim(1)) + 1;
    p.meta.max_seq_len = i32(p.meta.seq_lens)[0];
    EXPECT_THROW(run_attention(*be, p, 0.1f, 0), Error);
  }
  {  // Hkv that does not divide Hq
    AttnProblem p = make_problem(shape, 16, {{3, 5}}, rng);
    Tensor out = poisoned_f32({5, 4 * 64});
    EXPECT_THROW(be->paged_attention(out, p.qkv, p.k_cache, p.v_cache, p.meta, {3, 2, 64}, 0.1f, 0),
                 Error);
  }
}

}  // namespace
}  // namespace llmcore
