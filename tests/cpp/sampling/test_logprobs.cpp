// Raw logprobs (log_softmax of the unprocessed logits): values against a naive double
// computation, ranks and top lists with ties, and NaN / +inf rows refused.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "sampling/sampler.h"
#include "sampling_test_util.h"

namespace llmcore {
namespace {

using testing::Row;

// log_softmax without the max shift, in long double: independent of the max-shifted double
// computation under test. `offset` is subtracted first (exactly representable shifts only).
std::vector<double> naive_log_softmax(const std::vector<float>& x, double offset = 0.0) {
  long double sum = 0.0L;
  for (float v : x) sum += std::exp(static_cast<long double>(v) - offset);
  std::vector<double> out;
  for (float v : x) out.push_back(static_cast<double>(static_cast<long double>(v) - offset - std::log(sum)));
  return out;
}

TEST(RawLogprobs, MatchNaiveLogSoftmax) {
  std::mt19937_64 gen(7);
  for (int trial = 0; trial < 20; ++trial) {
    const std::vector<float> x = testing::random_logits(gen, 1000, 4.0);
    const std::vector<double> want = naive_log_softmax(x);
    for (int32_t t : {0, 17, 500, 999}) {
      TokenLogprob got;
      raw_logprobs(x.data(), 1000, t, 0, &got, nullptr);
      EXPECT_EQ(got.token_id, t);
      EXPECT_NEAR(got.logprob, want[t], 1e-6 * std::max(1.0, std::abs(want[t])));
    }
  }
}

TEST(RawLogprobs, StableForLargeLogits) {
  // exp(1000) overflows double: only a max-shifted computation survives.
  std::vector<float> x = {1000.0f, 999.0f, 990.0f, 1001.5f, -1000.0f};
  const std::vector<double> want = naive_log_softmax(x, 1000.0);
  for (int32_t t = 0; t < 5; ++t) {
    TokenLogprob got;
    raw_logprobs(x.data(), 5, t, 0, &got, nullptr);
    EXPECT_TRUE(std::isfinite(got.logprob));
    EXPECT_NEAR(got.logprob, want[t], 1e-5 * std::max(1.0, std::abs(want[t]))) << t;
  }
}

TEST(RawLogprobs, NegativeInfinityIsZeroProbability) {
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> x = {0.0f, ninf, 0.0f};
  TokenLogprob got;
  raw_logprobs(x.data(), 3, 0, 0, &got, nullptr);
  EXPECT_NEAR(got.logprob, std::log(0.5), 1e-7);
  raw_logprobs(x.data(), 3, 1, 0, &got, nullptr);
  EXPECT_EQ(got.logprob, ninf);
  EXPECT_EQ(got.rank, 3);
}

TEST(RawLogprobs, RankCountsStrictlyHigherTokens) {
  // Values 3 (ids 1, 2, 4), 2 (id 3), 1 (id 0), 0 (id 5).
  const std::vector<float> x = {1.0f, 3.0f, 3.0f, 2.0f, 3.0f, 0.0f};
  const int want_rank[6] = {5, 1, 1, 4, 1, 6};
  for (int32_t t = 0; t < 6; ++t) {
    TokenLogprob got;
    raw_logprobs(x.data(), 6, t, 0, &got, nullptr);
    EXPECT_EQ(got.rank, want_rank[t]) << t;
  }
}

TEST(RawLogprobs, TopListBestFirstTiesByLowerId) {
  const std::vector<float> x = {1.0f, 3.0f, 3.0f, 2.0f, 3.0f, 0.0f};
  const std::vector<double> lp = naive_log_softmax(x);
  std::vector<TokenLogprob> top;
  raw_logprobs(x.data(), 6, 0, 4, nullptr, &top);
  ASSERT_EQ(top.size(), 4u);
  const int32_t want_ids[4] = {1, 2, 4, 3};
  const int want_ranks[4] = {1, 1, 1, 4};
  for (int j = 0; j < 4; ++j) {
    EXPECT_EQ(top[j].token_id, want_ids[j]) << j;
    EXPECT_EQ(top[j].rank, want_ranks[j]) << j;
    EXPECT_NEAR(top[j].logprob, lp[want_ids[j]], 1e-6) << j;
  }
  raw_logprobs(x.data(), 6, 0, 0, nullptr, &top);
  EXPECT_TRUE(top.empty());
  // More than the vocabulary: every token, still ordered.
  raw_logprobs(x.data(), 6, 0, 20, nullptr, &top);
  ASSERT_EQ(top.size(), 6u);
  EXPECT_EQ(top[4].token_id, 0);
  EXPECT_EQ(top[5].token_id, 5);
  double mass = 0.0;
  for (const TokenLogprob& t : top) mass += std::exp(static_cast<double>(t.logprob));
  EXPECT_NEAR(mass, 1.0, 1e-6);
}

TEST(RawLogprobs, TopListOnLargeVocabMatchesFullSort) {
  std::mt19937_64 gen(11);
  const std::vector<float> x = testing::random_logits(gen, 5000, 3.0);
  std::vector<int32_t> ids(5000);
  for (int i = 0; i < 5000; ++i) ids[i] = i;
  std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return x[a] > x[b]; });
  std::vector<TokenLogprob> top;
  raw_logprobs(x.data(), 5000, 0, kMaxLogprobs, nullptr, &top);
  ASSERT_EQ(top.size(), static_cast<size_t>(kMaxLogprobs));
  for (int j = 0; j < kMaxLogprobs; ++j) EXPECT_EQ(top[j].token_id, ids[j]) << j;
}

TEST(RawLogprobs, SampleReportsRawNotProcessedLogprobs) {
  // A bias that moves the greedy choice must not move the reported logprobs.
  Row row;
  row.logits = {2.0f, 1.0f, 0.5f, -1.0f};
  row.params = testing::greedy_params();
  row.params.logit_bias = {{3, 10.0}};
  row.num_logprobs = 2;
  const std::vector<double> lp = naive_log_softmax(row.logits);
  const SampleResult got = row.sample_one();
  EXPECT_EQ(got.token_id, 3);
  EXPECT_EQ(got.chosen.token_id, 3);
  EXPECT_NEAR(got.chosen.logprob, lp[3], 1e-6);
  EXPECT_EQ(got.chosen.rank, 4);
  ASSERT_EQ(got.top.size(), 2u);
  EXPECT_EQ(got.top[0].token_id, 0);
  EXPECT_NEAR(got.top[0].logprob, lp[0], 1e-6);
  EXPECT_EQ(got.top[1].token_id, 1);
}

TEST(RawLogprobs, NoTopListUnlessAsked) {
  Row row;
  row.logits = {0.0f, 1.0f};
  row.params = testing::greedy_params();
  EXPECT_TRUE(row.sample_one().top.empty());
  row.num_logprobs = 0;
  EXPECT_TRUE(row.sample_one().top.empty());
  row.num_logprobs = 1;
  EXPECT_EQ(row.sample_one().top.size(), 1u);
}

void expect_runtime_error_naming(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kRuntime);
    for (const std::string& part : parts) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << "'" << part << "' not in: " << e.what();
    }
  }
}

TEST(RawLogprobs, NanOrInfRowIsARuntimeErrorNamingTheRow) {
  Row good, bad;
  good.logits = {0.0f, 1.0f, 2.0f};
  bad.logits = {0.0f, std::numeric_limits<float>::quiet_NaN(), 2.0f};
  good.params = bad.params = testing::greedy_params();
  expect_runtime_error_naming([&] { sample({good.request(), bad.request()}, 3); }, {"NaN", "row 1"});
  bad.logits[1] = std::numeric_limits<float>::infinity();
  expect_runtime_error_naming([&] { sample({good.request(), bad.request()}, 3); }, {"inf", "row 1"});
  bad.logits[1] = std::numeric_limits<float>::quiet_NaN();
  TokenLogprob chosen;
  expect_runtime_error_naming([&] { raw_logprobs(bad.logits.data(), 3, 0, 0, &chosen, nullptr); }, {"NaN"});
}

}  // namespace
}  // namespace llmcore
