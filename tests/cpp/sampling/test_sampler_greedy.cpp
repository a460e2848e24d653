// Greedy sampling and the logits processors: argmax with lowest-id ties, top_k=1 equals greedy,
// and each of logit_bias, min_tokens and the repetition / frequency / presence penalties moves
// the greedy choice exactly when the hand-computed processed logits say it should.
#include <gtest/gtest.h>

#include <limits>
#include <random>
#include <vector>

#include "core/error.h"
#include "sampling/sampler.h"
#include "sampling_test_util.h"

namespace llmcore {
namespace {

using testing::naive_argmax;
using testing::Row;

// Greedy choice for `logits` under `params` with the given history.
int32_t greedy_token(std::vector<float> logits, SamplingParams params, std::vector<int32_t> token_ids = {},
                     int num_prompt_tokens = 0, std::vector<int32_t> eos = {}) {
  Row row;
  row.logits = std::move(logits);
  row.params = params;
  row.params.temperature = 0.0;
  row.token_ids = std::move(token_ids);
  row.num_prompt_tokens = num_prompt_tokens;
  row.eos = std::move(eos);
  return row.sample_one().token_id;
}

TEST(Greedy, IsArgmaxWithLowestIdOnTies) {
  std::mt19937_64 gen(3);
  for (int trial = 0; trial < 50; ++trial) {
    const std::vector<float> x = testing::random_logits(gen, 300, 2.0);
    EXPECT_EQ(greedy_token(x, SamplingParams()), naive_argmax(std::vector<double>(x.begin(), x.end())));
  }
  EXPECT_EQ(greedy_token({0.0f, 5.0f, 5.0f, 1.0f}, SamplingParams()), 1);
  EXPECT_EQ(greedy_token({7.0f, 7.0f}, SamplingParams()), 0);
}

TEST(Greedy, DoesNotTouchTheGenerator) {
  Row row;
  row.logits = {0.1f, 0.9f, 0.3f};
  row.params = testing::greedy_params();
  const std::mt19937_64 before = row.rng;
  for (int i = 0; i < 5; ++i) row.sample_one();
  EXPECT_TRUE(row.rng == before);
}

TEST(Greedy, TopKOneEqualsGreedyAtTemperatureOne) {
  std::mt19937_64 gen(5);
  for (int trial = 0; trial < 200; ++trial) {
    Row row;
    row.logits = testing::random_logits(gen, 64, 1.0);
    if (trial % 4 == 0) row.logits[trial % 64] = row.logits[(trial + 9) % 64] = 50.0f;  // a tie at the top
    row.params.temperature = 1.0;
    row.params.top_k = 1;
    row.rng.seed(trial);
    EXPECT_EQ(row.sample_one().token_id,
              naive_argmax(std::vector<double>(row.logits.begin(), row.logits.end())))
        << trial;
  }
}

TEST(LogitsProcessors, LogitBiasFlipsExactlyWhenBiasedLogitWins) {
  const std::vector<float> x = {2.0f, 1.0f, 0.5f};
  SamplingParams p;
  p.logit_bias = {{1, 1.5}};  // {2, 2.5, 0.5}
  EXPECT_EQ(greedy_token(x, p), 1);
  p.logit_bias = {{1, 0.9}};  // {2, 1.9, 0.5}
  EXPECT_EQ(greedy_token(x, p), 0);
  p.logit_bias = {{0, -1.2}, {2, 0.8}};  // {0.8, 1, 1.3}
  EXPECT_EQ(greedy_token(x, p), 2);
}

TEST(LogitsProcessors, MinTokensMasksEosAndStopTokensUntilReached) {
  const std::vector<float> x = {1.0f, 3.0f, 2.0f, 0.0f};
  const std::vector<int32_t> eos = {1};
  SamplingParams p;
  p.min_tokens = 2;
  // prompt {3, 3}; outputs so far: 1 (< 2) -> eos 1 masked -> {1, -inf, 2, 0}
  EXPECT_EQ(greedy_token(x, p, {3, 3, 0}, 2, eos), 2);
  // outputs so far: 2 -> nothing masked
  EXPECT_EQ(greedy_token(x, p, {3, 3, 0, 0}, 2, eos), 1);
  // stop_token_ids masked too: {1, -inf, -inf, 0}
  p.stop_token_ids = {2};
  EXPECT_EQ(greedy_token(x, p, {3, 3}, 2, eos), 0);
  // ignore_eos does not lift the mask (vLLM masks all_stop_token_ids, EOS included).
  p.ignore_eos = true;
  EXPECT_EQ(greedy_token(x, p, {3, 3}, 2, eos), 0);
  p.ignore_eos = false;
  p.min_tokens = 0;
  EXPECT_EQ(greedy_token(x, p, {3, 3}, 2, eos), 1);
}

TEST(LogitsProcessors, MinTokensMaskingEverythingIsAnError) {
  Row row;
  row.logits = {1.0f, -std::numeric_limits<float>::infinity()};
  row.params = testing::greedy_params();
  row.params.min_tokens = 1;
  row.eos = {0};
  EXPECT_THROW(row.sample_one(), Error);
}

TEST(LogitsProcessors, RepetitionPenaltyDividesPositiveMultipliesNegative) {
  SamplingParams p;
  // Token 0 in the prompt, positive logit: 2 / 1.2 = 1.667 < 1.8; 2 / 1.05 = 1.905 > 1.8.
  p.repetition_penalty = 1.2;
  EXPECT_EQ(greedy_token({2.0f, 1.8f, -0.5f}, p, {0, 2}, 2), 1);
  p.repetition_penalty = 1.05;
  EXPECT_EQ(greedy_token({2.0f, 1.8f, -0.5f}, p, {0, 2}, 2), 0);
  // Token 0 in the output, negative logit: -1 * 1.2 = -1.2 < -1.1; -1 * 1.05 = -1.05 > -1.1.
  p.repetition_penalty = 1.2;
  EXPECT_EQ(greedy_token({-1.0f, -1.1f, -3.0f}, p, {2, 0}, 1), 1);
  p.repetition_penalty = 1.05;
  EXPECT_EQ(greedy_token({-1.0f, -1.1f, -3.0f}, p, {2, 0}, 1), 0);
  // Below 1 it boosts: 1 / 0.5 = 2 > 1.5.
  p.repetition_penalty = 0.5;
  EXPECT_EQ(greedy_token({1.0f, 1.5f}, p, {0}, 1), 0);
  // Once per distinct token, however often it occurs: 2 / 1.05 = 1.905 > 1.8 (three times
  // would give 2 / 1.05^3 = 1.728 < 1.8).
  p.repetition_penalty = 1.05;
  EXPECT_EQ(greedy_token({2.0f, 1.8f}, p, {0, 0, 0}, 1), 0);
}

TEST(LogitsProcessors, FrequencyPenaltyScalesWithOutputCount) {
  SamplingParams p;
  // Token 0 twice in the output: 2 - 0.2 * 2 = 1.6 > 1.5; 2 - 0.3 * 2 = 1.4 < 1.5.
  p.frequency_penalty = 0.2;
  EXPECT_EQ(greedy_token({2.0f, 1.5f}, p, {1, 0, 0}, 1), 0);
  p.frequency_penalty = 0.3;
  EXPECT_EQ(greedy_token({2.0f, 1.5f}, p, {1, 0, 0}, 1), 1);
  // Prompt occurrences do not count.
  p.frequency_penalty = 2.0;
  EXPECT_EQ(greedy_token({2.0f, 1.5f}, p, {0, 0, 0, 1}, 3), 0);
  // Negative values reward repeats: 1.5 + 0.3 * 2 = 2.1 > 2.
  p.frequency_penalty = -0.3;
  EXPECT_EQ(greedy_token({2.0f, 1.5f}, p, {1, 1}, 0), 1);
}

TEST(LogitsProcessors, PresencePenaltyIsIndependentOfCount) {
  SamplingParams p;
  // Token 0 three times in the output: 2 - 0.4 = 1.6 > 1.5; 2 - 0.6 = 1.4 < 1.5.
  p.presence_penalty = 0.4;
  EXPECT_EQ(greedy_token({2.0f, 1.5f}, p, {0, 0, 0}, 0), 0);
  p.presence_penalty = 0.6;
  EXPECT_EQ(greedy_token({2.0f, 1.5f}, p, {0, 0, 0}, 0), 1);
  // Only in the prompt: untouched.
  EXPECT_EQ(greedy_token({2.0f, 1.5f}, p, {0, 0, 0}, 3), 0);
}

TEST(LogitsProcessors, RepetitionBeforeFrequency) {
  // Output {0, 0}, repetition 2, frequency 0.2: (3 / 2) - 0.4 = 1.1 < 1.2 -> token 1.
  // The other order would give (3 - 0.4) / 2 = 1.3 > 1.2 -> token 0.
  SamplingParams p;
  p.repetition_penalty = 2.0;
  p.frequency_penalty = 0.2;
  EXPECT_EQ(greedy_token({3.0f, 1.2f}, p, {0, 0}, 0), 1);
  p.frequency_penalty = 0.1;  // 1.5 - 0.2 = 1.3 > 1.2
  EXPECT_EQ(greedy_token({3.0f, 1.2f}, p, {0, 0}, 0), 0);
}

TEST(LogitsProcessors, AllCombinedMatchHandComputedLogits) {
  // 8 tokens; prompt {1, 2}, output {2, 5, 5}; eos {7}; 3 outputs < min_tokens 4.
  const std::vector<float> x = {0.3f, 2.5f, 2.2f, -0.4f, 1.0f, 2.4f, 0.0f, 5.0f};
  SamplingParams p;
  p.min_tokens = 4;
  p.repetition_penalty = 1.3;
  p.frequency_penalty = 0.25;
  p.presence_penalty = 0.1;
  p.logit_bias = {{3, 3.0}, {4, 1.1}};
  std::vector<double> want(x.begin(), x.end());
  want[7] = -std::numeric_limits<double>::infinity();
  want[3] += 3.0;
  want[4] += 1.1;
  for (int id : {1, 2, 5}) want[id] = want[id] > 0 ? want[id] / 1.3 : want[id] * 1.3;
  want[2] -= 0.25 * 1 + 0.1;
  want[5] -= 0.25 * 2 + 0.1;
  // want = {0.3, 1.923, 1.342, 2.6, 2.1, 1.246, 0, -inf}
  EXPECT_EQ(naive_argmax(want), 3);
  EXPECT_EQ(greedy_token(x, p, {1, 2, 2, 5, 5}, 2, {7}), 3);
  p.logit_bias = {{4, 1.1}};  // token 3 back to -0.4: 2.1 wins
  EXPECT_EQ(greedy_token(x, p, {1, 2, 2, 5, 5}, 2, {7}), 4);
}

TEST(Sample, RowsAreIndependentOfTheBatch) {
  // Penalties in one row must leave nothing behind for the next (shared scratch).
  std::mt19937_64 gen(17);
  std::vector<Row> rows(6);
  for (size_t i = 0; i < rows.size(); ++i) {
    rows[i].logits = testing::random_logits(gen, 200, 2.0);
    rows[i].token_ids = {1, 2, 3, 3, 4, 5, 5, 5};
    rows[i].num_prompt_tokens = 3;
    rows[i].rng.seed(100 + i);
    rows[i].num_logprobs = 3;
  }
  rows[0].params.repetition_penalty = 1.5;
  rows[0].params.frequency_penalty = 1.0;
  rows[1].params.temperature = 0.0;
  rows[2].params.presence_penalty = 2.0;
  rows[3].params.top_k = 5;
  rows[4].params.top_p = 0.5;
  rows[5].params.min_p = 0.1;
  std::vector<SampleResult> alone;
  for (Row& r : rows) {
    const std::mt19937_64 saved = r.rng;
    alone.push_back(r.sample_one());
    r.rng = saved;
  }
  std::vector<SampleRequest> batch;
  for (size_t i = rows.size(); i-- > 0;) batch.push_back(rows[i].request());
  const std::vector<SampleResult> together = sample(batch, 200);
  for (size_t i = 0; i < rows.size(); ++i) {
    const SampleResult& b = together[rows.size() - 1 - i];
    EXPECT_EQ(b.token_id, alone[i].token_id) << i;
    EXPECT_EQ(b.chosen.logprob, alone[i].chosen.logprob) << i;
    ASSERT_EQ(b.top.size(), alone[i].top.size());
    for (size_t j = 0; j < b.top.size(); ++j) EXPECT_EQ(b.top[j].token_id, alone[i].top[j].token_id);
  }
}

}  // namespace
}  // namespace llmcore
