// Random sampling: one generator draw per sample, seeded reproducibility, the token picked for a
// given draw against a naive full-sort reference, and empirical frequencies against
// hand-derived renormalized probabilities after temperature / min_p / top_k / top_p.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <random>
#include <vector>

#include "sampling/sampler.h"
#include "sampling_test_util.h"

namespace llmcore {
namespace {

using testing::Row;

TEST(RandomSample, TakesExactlyOneDrawPerSample) {
  Row row;
  row.logits = {0.1f, 0.9f, 0.3f, -2.0f};
  for (int top_k : {0, 1, 2}) {
    row.params.top_k = top_k;
    std::mt19937_64 expected = row.rng;
    for (int i = 0; i < 10; ++i) {
      row.sample_one();
      expected.discard(1);
      EXPECT_TRUE(row.rng == expected) << "top_k " << top_k << " sample " << i;
    }
  }
}

TEST(RandomSample, SameSeedSameTokens) {
  std::mt19937_64 gen(23);
  const std::vector<float> logits = testing::random_logits(gen, 50, 0.5);
  auto run = [&](uint64_t seed) {
    Row row;
    row.logits = logits;
    row.params.temperature = 0.9;
    row.params.top_p = 0.95;
    row.rng.seed(seed);
    std::vector<int32_t> out;
    for (int i = 0; i < 100; ++i) out.push_back(row.sample_one().token_id);
    return out;
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_NE(run(42), run(43));
}

// Naive reference: full softmax in double, full sort, each filter on normalized probabilities.
int32_t reference_pick(const std::vector<float>& logits, const SamplingParams& p, double u) {
  const int n = static_cast<int>(logits.size());
  std::vector<double> prob(n);
  double max_x = -INFINITY;
  for (int i = 0; i < n; ++i) max_x = std::max(max_x, logits[i] / p.temperature);
  double z = 0.0;
  for (int i = 0; i < n; ++i) z += (prob[i] = std::exp(logits[i] / p.temperature - max_x));
  double max_p = 0.0;
  for (double& q : prob) max_p = std::max(max_p, q /= z);
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) {
    if (prob[i] > 0 && prob[i] >= p.min_p * max_p) ids.push_back(i);
  }
  std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  if (p.top_k >= 1 && p.top_k < static_cast<int>(ids.size())) ids.resize(p.top_k);
  auto renormalize = [&] {
    double s = 0.0;
    for (int32_t id : ids) s += prob[id];
    for (int32_t id : ids) prob[id] /= s;
  };
  renormalize();
  if (p.top_p < 1.0) {
    double cum = 0.0;
    size_t keep = 0;
    while (keep < ids.size() && cum < p.top_p) cum += prob[ids[keep++]];
    ids.resize(keep);
    renormalize();
  }
  double cum = 0.0;
  for (int32_t id : ids) {
    cum += prob[id];
    if (cum > u) return id;
  }
  return ids.back();
}

TEST(RandomSample, PickForADrawMatchesNaiveReference) {
  struct Setting {
    int vocab_size;
    double stddev, temperature, top_p, min_p;
    int top_k;
  };
  const std::vector<Setting> settings = {
      {50, 2.0, 1.0, 1.0, 0.0, 0},     {50, 2.0, 0.7, 0.9, 0.0, 0},    {50, 2.0, 1.3, 1.0, 0.0, 5},
      {50, 2.0, 1.0, 1.0, 0.2, 0},     {50, 2.0, 1.0, 0.8, 0.05, 10},  {5000, 1.0, 5.0, 1.0, 0.0, 0},
      {5000, 1.0, 3.0, 0.95, 0.0, 0},  {5000, 1.0, 2.0, 0.9, 0.0, 1000}, {5000, 3.0, 1.0, 1.0, 0.0, 300},
      {5000, 1.0, 1.0, 1.0, 0.5, 0},
  };
  std::mt19937_64 gen(31);
  for (const Setting& s : settings) {
    for (int trial = 0; trial < 60; ++trial) {
      Row row;
      row.logits = testing::random_logits(gen, s.vocab_size, s.stddev);
      // Ties on purpose: the order among equal logits is lowest id first.
      for (int i = 0; i + 1 < s.vocab_size; i += 7) row.logits[i + 1] = row.logits[i];
      row.params.temperature = s.temperature;
      row.params.top_p = s.top_p;
      row.params.min_p = s.min_p;
      row.params.top_k = s.top_k;
      row.rng.seed(1000 * trial + s.vocab_size);
      std::mt19937_64 copy = row.rng;
      const double u = testing::uniform_from(copy());
      EXPECT_EQ(row.sample_one().token_id, reference_pick(row.logits, row.params, u))
          << "vocab " << s.vocab_size << " T " << s.temperature << " top_p " << s.top_p << " min_p "
          << s.min_p << " top_k " << s.top_k << " trial " << trial;
    }
  }
}

// Draws `num_draws` tokens and checks each frequency against `want` (zero: must never appear)
// within 5 standard errors.
void expect_distribution(Row row, const std::vector<double>& want, int num_draws = 200000) {
  std::vector<int> counts(want.size(), 0);
  for (int i = 0; i < num_draws; ++i) ++counts.at(row.sample_one().token_id);
  for (size_t t = 0; t < want.size(); ++t) {
    if (want[t] == 0.0) {
      EXPECT_EQ(counts[t], 0) << "filtered-out token " << t << " was sampled";
      continue;
    }
    const double freq = static_cast<double>(counts[t]) / num_draws;
    const double se = std::sqrt(want[t] * (1.0 - want[t]) / num_draws);
    EXPECT_NEAR(freq, want[t], 5.0 * se + 1e-12) << "token " << t;
  }
}

// p^(1/T) over the hand-derived kept set, renormalized; zero elsewhere.
std::vector<double> tempered(const std::vector<double>& p, double temperature, const std::vector<int>& kept) {
  std::vector<double> out(p.size(), 0.0);
  double z = 0.0;
  for (int t : kept) z += (out[t] = std::pow(p[t], 1.0 / temperature));
  for (int t : kept) out[t] /= z;
  return out;
}

class Distribution : public ::testing::Test {
 protected:
  // Logits log(p): softmax at temperature 1 gives back p.
  const std::vector<double> p_ = {0.3, 0.25, 0.2, 0.15, 0.07, 0.03};
  Row row_;
  void SetUp() override {
    for (double q : p_) row_.logits.push_back(static_cast<float>(std::log(q)));
    row_.rng.seed(2024);
  }
};

TEST_F(Distribution, Plain) { expect_distribution(row_, tempered(p_, 1.0, {0, 1, 2, 3, 4, 5})); }

TEST_F(Distribution, Temperature) {
  row_.params.temperature = 2.0;
  expect_distribution(row_, tempered(p_, 2.0, {0, 1, 2, 3, 4, 5}));
  row_.params.temperature = 0.5;
  expect_distribution(row_, tempered(p_, 0.5, {0, 1, 2, 3, 4, 5}));
}

TEST_F(Distribution, TopK) {
  row_.params.top_k = 3;
  expect_distribution(row_, tempered(p_, 1.0, {0, 1, 2}));
  row_.params.top_k = 100;  // beyond the vocabulary: nothing removed
  expect_distribution(row_, tempered(p_, 1.0, {0, 1, 2, 3, 4, 5}));
}

TEST_F(Distribution, TopP) {
  // Cumulative 0.3, 0.55, 0.75, 0.9: 0.5 is reached by two tokens, 0.8 by four.
  row_.params.top_p = 0.5;
  expect_distribution(row_, tempered(p_, 1.0, {0, 1}));
  row_.params.top_p = 0.8;
  expect_distribution(row_, tempered(p_, 1.0, {0, 1, 2, 3}));
  row_.params.top_p = 0.1;  // the first token always stays
  expect_distribution(row_, tempered(p_, 1.0, {0}));
}

TEST_F(Distribution, MinP) {
  // Thresholds 0.6 * 0.3 = 0.18 keeps three; 0.2 * 0.3 = 0.06 keeps five.
  row_.params.min_p = 0.6;
  expect_distribution(row_, tempered(p_, 1.0, {0, 1, 2}));
  row_.params.min_p = 0.2;
  expect_distribution(row_, tempered(p_, 1.0, {0, 1, 2, 3, 4}));
}

TEST_F(Distribution, AllFiltersAfterTemperature) {
  // T = 2: q ~ sqrt(p) = {.548, .5, .447, .387, .265, .173}.
  // min_p 0.4: threshold 0.4 * .548 = .219 drops token 5 only.
  // top_k 4: tokens 0..3, renormalized {.291, .266, .238, .206}.
  // top_p 0.7: cumulative .291, .557, .794 -> tokens 0..2.
  row_.params.temperature = 2.0;
  row_.params.min_p = 0.4;
  row_.params.top_k = 4;
  row_.params.top_p = 0.7;
  expect_distribution(row_, tempered(p_, 2.0, {0, 1, 2}));
}

TEST(DistributionOrder, FiltersFollowProbabilityNotTokenId) {
  // Probabilities shuffled over the ids: top_p 0.5 keeps ids 1 (0.3) and 3 (0.25).
  const std::vector<double> p = {0.07, 0.3, 0.03, 0.25, 0.15, 0.2};
  Row row;
  for (double q : p) row.logits.push_back(static_cast<float>(std::log(q)));
  row.params.top_p = 0.5;
  expect_distribution(row, tempered(p, 1.0, {1, 3}));
  row.params.top_p = 1.0;
  row.params.top_k = 3;  // ids 1, 3, 5
  expect_distribution(row, tempered(p, 1.0, {1, 3, 5}));
}

TEST(DistributionOrder, TopKTiesKeepLowerIds) {
  // Three tokens tie at the top; top_k 2 keeps ids 1 and 2 (0.5 each), never 3.
  const std::vector<double> p = {0.1, 0.3, 0.3, 0.3};
  Row row;
  for (double q : p) row.logits.push_back(static_cast<float>(std::log(q)));
  row.params.top_k = 2;
  expect_distribution(row, tempered(p, 1.0, {1, 2}));
}

}  // namespace
}  // namespace llmcore
