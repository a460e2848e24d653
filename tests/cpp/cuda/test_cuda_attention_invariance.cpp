// Batch invariance of CUDA paged attention: a query row's output bits must not depend on the
// other sequences of the step, on how its prompt was chunked (or prefix-cached), or on whether
// it ran as a decode row (split-K over partitions + combine) or inside a prefill chunk (one
// CTA walking all partitions).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "cuda/test_cuda_attention_util.h"

namespace llmcore {
namespace {

using namespace attn_test;

bool all_finite(const std::vector<float>& v) {
  for (float x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

// Runs `seqs` as one step and returns each sequence's output rows.
std::vector<std::vector<float>> run_step(const AttnShape& shape, int block_size,
                                         const std::vector<StepSeq>& seqs, int window,
                                         std::mt19937& rng, DType dtype = DType::kBF16,
                                         bool share_blocks = false) {
  const Problem p = make_problem(shape, block_size, dtype, seqs, rng, 7, share_blocks);
  const std::vector<float> out = run_gpu(p, default_scale(shape), window);
  std::vector<std::vector<float>> per_seq;
  int t = 0;
  for (const StepSeq& s : seqs) {
    per_seq.push_back(rows(out, shape, t, s.query_len));
    t += s.query_len;
  }
  return per_seq;
}

TEST(CudaAttentionInvariance, RowAloneEqualsRowInsideBatchOf64) {
  ATTN_SKIP_WITHOUT_CUDA();
  const AttnShape shape{8, 2, 128};
  std::mt19937 rng(64);
  // Targets: a split-K decode, a short decode, a chunk after cached context that crosses a
  // partition edge, and a fresh prefill.
  std::vector<SeqData> targets;
  targets.push_back(make_seq(shape, 3001, DType::kBF16, rng));
  targets.push_back(make_seq(shape, 301, DType::kBF16, rng));
  targets.push_back(make_seq(shape, 745, DType::kBF16, rng));
  targets.push_back(make_seq(shape, 90, DType::kBF16, rng));
  const std::vector<StepSeq> target_steps = {
      {&targets[0], 3000, 1}, {&targets[1], 300, 1}, {&targets[2], 700, 45}, {&targets[3], 0, 90}};

  // 64 others: decodes up to 3500 keys and chunks up to 120 tokens after cached context.
  std::vector<SeqData> others;
  others.reserve(64);
  std::vector<StepSeq> other_steps;
  std::uniform_int_distribution<int> ctx_len(0, 3500), chunk(1, 120), coin(0, 2);
  for (int i = 0; i < 64; ++i) {
    const int q = coin(rng) == 0 ? chunk(rng) : 1;
    const int ctx = q == 1 ? ctx_len(rng) : ctx_len(rng) / 4;
    others.push_back(make_seq(shape, ctx + q, DType::kBF16, rng));
    other_steps.push_back({&others.back(), ctx, q});
  }

  for (int window : {0, 1000}) {
    SCOPED_TRACE("window " + std::to_string(window));
    for (size_t k = 0; k < target_steps.size(); ++k) {
      SCOPED_TRACE("target " + std::to_string(k));
      const std::vector<float> alone = run_step(shape, 16, {target_steps[k]}, window, rng)[0];
      ASSERT_TRUE(all_finite(alone));
      // Inside the batch at a varying place (first, middle, last), with its blocks elsewhere.
      for (size_t at : {size_t{0}, size_t{31}, other_steps.size()}) {
        std::vector<StepSeq> batch = other_steps;
        batch.insert(batch.begin() + at, target_steps[k]);
        const std::vector<float> inside = run_step(shape, 16, batch, window, rng)[at];
        EXPECT_TRUE(same_bits(alone, inside)) << "at index " << at;
      }
    }
  }
}

TEST(CudaAttentionInvariance, PromptChunkingDoesNotChangeBits) {
  ATTN_SKIP_WITHOUT_CUDA();
  // A 300-token prompt as one chunk, as chunks of 7 / 100 / 193 (each chunk's context is the
  // cached earlier chunks, as with prefix caching), and token by token (decode steps).
  for (int window : {0, 64}) {
    for (int group : {1, 4}) {
      SCOPED_TRACE("window " + std::to_string(window) + " gqa " + std::to_string(group));
      const AttnShape shape{2 * group, 2, 128};
      std::mt19937 rng(300 + window + group);
      const SeqData prompt = make_seq(shape, 300, DType::kBF16, rng);
      const std::vector<float> whole = run_step(shape, 16, {{&prompt, 0, 300}}, window, rng)[0];
      ASSERT_TRUE(all_finite(whole));

      std::vector<float> chunked;
      int done = 0;
      for (int len : {7, 100, 193}) {
        const std::vector<float> part = run_step(shape, 16, {{&prompt, done, len}}, window, rng)[0];
        chunked.insert(chunked.end(), part.begin(), part.end());
        done += len;
      }
      EXPECT_TRUE(same_bits(whole, chunked));

      std::vector<float> stepwise;
      for (int pos = 0; pos < 300; ++pos) {
        const std::vector<float> row = run_step(shape, 16, {{&prompt, pos, 1}}, window, rng)[0];
        stepwise.insert(stepwise.end(), row.begin(), row.end());
      }
      EXPECT_TRUE(same_bits(whole, stepwise));
    }
  }
}

TEST(CudaAttentionInvariance, LongPromptChunksAcrossPartitions) {
  ATTN_SKIP_WITHOUT_CUDA();
  // 1300 tokens: one chunk vs 700 + 600 (the second chunk starts mid-partition after cached
  // context), and split-K decodes of chosen tokens vs the same rows of the single chunk.
  const AttnShape shape{8, 2, 64};
  for (int window : {0, 600}) {
    SCOPED_TRACE("window " + std::to_string(window));
    std::mt19937 rng(1300 + window);
    const SeqData prompt = make_seq(shape, 1300, DType::kBF16, rng);
    const std::vector<float> whole = run_step(shape, 32, {{&prompt, 0, 1300}}, window, rng)[0];
    ASSERT_TRUE(all_finite(whole));
    std::vector<float> chunked = run_step(shape, 32, {{&prompt, 0, 700}}, window, rng)[0];
    const std::vector<float> second = run_step(shape, 32, {{&prompt, 700, 600}}, window, rng)[0];
    chunked.insert(chunked.end(), second.begin(), second.end());
    EXPECT_TRUE(same_bits(whole, chunked));
    for (int pos : {511, 512, 1023, 1024, 1100, 1299}) {
      const std::vector<float> decode = run_step(shape, 32, {{&prompt, pos, 1}}, window, rng)[0];
      EXPECT_TRUE(same_bits(rows(whole, shape, pos, 1), decode)) << "token " << pos;
    }
  }
}

TEST(CudaAttentionInvariance, DecodeEqualsLastRowOfPrefillChunk) {
  ATTN_SKIP_WITHOUT_CUDA();
  // Decode of token p (split-K when p >= 512) vs the same token as the last row of a 37-token
  // chunk (one CTA over all partitions), in a batch with other sequences both times.
  const AttnShape shape{32, 8, 128};
  std::mt19937 rng(37);
  const SeqData filler_data = make_seq(shape, 2100, DType::kBF16, rng);
  for (int window : {0, 900}) {
    for (int p : {5, 36, 511, 512, 1000, 3000, 5000}) {
      SCOPED_TRACE("window " + std::to_string(window) + " token " + std::to_string(p));
      const SeqData s = make_seq(shape, p + 1, DType::kBF16, rng);
      const int chunk = std::min(37, p + 1);
      const std::vector<StepSeq> as_decode = {{&filler_data, 2000, 100}, {&s, p, 1}};
      const std::vector<StepSeq> as_chunk = {{&s, p + 1 - chunk, chunk}, {&filler_data, 2099, 1}};
      const std::vector<float> decode = run_step(shape, 16, as_decode, window, rng)[1];
      const std::vector<float> last = rows(run_step(shape, 16, as_chunk, window, rng)[0], shape,
                                           chunk - 1, 1);
      ASSERT_TRUE(all_finite(decode));
      EXPECT_TRUE(same_bits(decode, last));
    }
  }
}

TEST(CudaAttentionInvariance, EveryPromptTokenAsDecodeEqualsOneChunk) {
  ATTN_SKIP_WITHOUT_CUDA();
  // A 3000-token prompt as one chunk (every row by CTAs walking all partitions) vs 3000 decode
  // sequences in one step, sequence p being the prompt's token p with its context cached in
  // blocks shared by all of them (split-K + combine from p = 512 on). Millions of compared
  // elements, so even a 1-ulp float32 difference between the two folds would flip some
  // output bits.
  const AttnShape shape{8, 2, 128};
  const int n = 3000;
  const std::vector<std::pair<DType, int>> cases = {
      {DType::kBF16, 0}, {DType::kBF16, 1000}, {DType::kF16, 0}};
  for (const auto& [dtype, window] : cases) {
    SCOPED_TRACE(std::string(dtype_name(dtype)) + " window " + std::to_string(window));
    std::mt19937 rng(n + window);
    const SeqData prompt = make_seq(shape, n, dtype, rng);
    const std::vector<float> whole = run_step(shape, 16, {{&prompt, 0, n}}, window, rng, dtype)[0];
    ASSERT_TRUE(all_finite(whole));
    std::vector<StepSeq> decodes;
    for (int pos = 0; pos < n; ++pos) decodes.push_back({&prompt, pos, 1});
    const std::vector<std::vector<float>> each =
        run_step(shape, 16, decodes, window, rng, dtype, /*share_blocks=*/true);
    int mismatched = 0, first_bad = -1;
    for (int pos = 0; pos < n; ++pos)
      if (!same_bits(rows(whole, shape, pos, 1), each[pos])) {
        ++mismatched;
        if (first_bad < 0) first_bad = pos;
      }
    EXPECT_EQ(mismatched, 0) << "first differing token " << first_bad;
  }
}

TEST(CudaAttentionInvariance, DecodeEqualsLastRowOfPrefillChunkAtEveryHeadDim) {
  ATTN_SKIP_WITHOUT_CUDA();
  // Every head dim the kernel has (D = 256: 32-key tiles), GQA groups of 1, 4 and 16 rows, a
  // decode row with one partition (walked) and with two (split + combine).
  for (const int d : {32, 64, 96, 128, 256}) {
    for (const AttnShape shape : {AttnShape{2, 2, d}, AttnShape{8, 2, d}, AttnShape{16, 1, d}}) {
      for (const DType dtype : {DType::kBF16, DType::kF16}) {
        if (dtype == DType::kF16 && shape.num_heads != 8) continue;
        std::mt19937 rng(d * 131 + shape.num_heads);
        for (int p : {0, 70, 600}) {
          SCOPED_TRACE("D " + std::to_string(d) + " Hq " + std::to_string(shape.num_heads) + " " +
                       dtype_name(dtype) + " token " + std::to_string(p));
          const SeqData s = make_seq(shape, p + 1, dtype, rng);
          const int chunk = std::min(19, p + 1);
          const std::vector<float> decode = run_step(shape, 16, {{&s, p, 1}}, 0, rng, dtype)[0];
          const std::vector<float> last =
              rows(run_step(shape, 16, {{&s, p + 1 - chunk, chunk}}, 0, rng, dtype)[0], shape, chunk - 1, 1);
          ASSERT_TRUE(all_finite(decode));
          EXPECT_TRUE(same_bits(decode, last));
        }
      }
    }
  }
}

}  // namespace
}  // namespace llmcore
