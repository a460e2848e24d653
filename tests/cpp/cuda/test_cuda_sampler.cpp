// The CUDA sampler against the reference (CPU) sampler on the same logits and generators: greedy
// and random rows with every filter and logits processor, prompt-logprob (forced) rows, top-n
// logprobs with ties, errors, odd vocabulary sizes and batch invariance; plus the empirical
// distribution of GPU draws against exact softmax probabilities.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_sampler.h"
#include "cuda/cuda_test_util.h"
#include "engine/sampling_params.h"
#include "sampling/sampler.h"

namespace llmcore {
namespace {

// One row and everything its SampleRequest points at.
struct TestRow {
  std::vector<float> logits;
  SamplingParams params;
  std::vector<int32_t> token_ids;
  int num_prompt_tokens = 0;
  std::vector<int32_t> eos;
  uint64_t seed = 0;
  int num_logprobs = -1;
  int32_t forced = -1;
};

class CudaSamplerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LLMCORE_SKIP_WITHOUT_CUDA();
    backend_ = std::make_unique<CudaBackend>(0, DType::kBF16);
    sampler_ = std::make_unique<CudaSampler>(*backend_);
  }

  // Samples `rows` on the GPU (gpu) or with the reference sampler, with fresh generators seeded
  // from each row's seed; `rngs` receives the generators afterwards.
  std::vector<SampleResult> sample_on(bool gpu, const std::vector<TestRow>& rows, int vocab,
                                      std::vector<std::mt19937_64>* rngs) {
    const int64_t n = static_cast<int64_t>(rows.size());
    Tensor host = Tensor::empty({n, vocab}, DType::kF32);
    for (int64_t r = 0; r < n; ++r) {
      EXPECT_EQ(static_cast<int>(rows[r].logits.size()), vocab);
      std::copy(rows[r].logits.begin(), rows[r].logits.end(), host.data_as<float>() + r * vocab);
    }
    Tensor device;
    if (gpu) {
      device = backend_->empty({n, vocab}, DType::kF32);
      backend_->copy(device, host);
    }
    const float* base = gpu ? device.data_as<float>() : host.data_as<float>();
    rngs->clear();
    for (const TestRow& row : rows) rngs->emplace_back(row.seed);
    std::vector<SampleRequest> reqs;
    for (int64_t r = 0; r < n; ++r) {
      SampleRequest q;
      q.logits = base + r * vocab;
      q.params = &rows[r].params;
      q.token_ids = &rows[r].token_ids;
      q.num_prompt_tokens = rows[r].num_prompt_tokens;
      q.rng = &(*rngs)[r];
      q.eos_token_ids = &rows[r].eos;
      q.num_logprobs = rows[r].num_logprobs;
      q.forced_token = rows[r].forced;
      reqs.push_back(q);
    }
    return gpu ? sampler_->sample(reqs, vocab) : sample(reqs, vocab);
  }

  // Both samplers on the same rows; returns {reference, gpu}.
  std::pair<std::vector<SampleResult>, std::vector<SampleResult>> run(const std::vector<TestRow>& rows,
                                                                      int vocab) {
    std::vector<std::mt19937_64> cpu_rngs, gpu_rngs;
    auto cpu = sample_on(false, rows, vocab, &cpu_rngs);
    auto gpu = sample_on(true, rows, vocab, &gpu_rngs);
    // Both consumed the generators identically (one draw per random row, none otherwise).
    for (size_t r = 0; r < rows.size(); ++r) EXPECT_EQ(cpu_rngs[r](), gpu_rngs[r]()) << "row " << r;
    return {cpu, gpu};
  }

  std::unique_ptr<CudaBackend> backend_;
  std::unique_ptr<CudaSampler> sampler_;
};

std::vector<float> normal_logits(int vocab, float stddev, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> x(vocab);
  for (float& v : x) v = dist(rng);
  return x;
}

void expect_same_logprobs(const SampleResult& cpu, const SampleResult& gpu, const std::string& what) {
  EXPECT_EQ(cpu.chosen.token_id, gpu.chosen.token_id) << what;
  EXPECT_NEAR(cpu.chosen.logprob, gpu.chosen.logprob, 2e-5) << what;
  EXPECT_EQ(cpu.chosen.rank, gpu.chosen.rank) << what;
  ASSERT_EQ(cpu.top.size(), gpu.top.size()) << what;
  for (size_t j = 0; j < cpu.top.size(); ++j) {
    EXPECT_EQ(cpu.top[j].token_id, gpu.top[j].token_id) << what << " top " << j;
    EXPECT_NEAR(cpu.top[j].logprob, gpu.top[j].logprob, 2e-5) << what << " top " << j;
    EXPECT_EQ(cpu.top[j].rank, gpu.top[j].rank) << what << " top " << j;
  }
}

TEST_F(CudaSamplerTest, GreedyWithProcessorsMatchesReference) {
  std::mt19937 rng(1);
  for (int vocab : {1, 7, 513, 32000, 128256}) {
    std::vector<TestRow> rows;
    for (int r = 0; r < 24; ++r) {
      TestRow row;
      row.logits = normal_logits(vocab, 2.0f, rng);
      row.params.temperature = 0.0;
      row.num_logprobs = r % 3 == 0 ? -1 : (r % 3 == 1 ? 0 : std::min(20, r));
      std::uniform_int_distribution<int> tok(0, vocab - 1);
      for (int t = 0; t < 30; ++t) row.token_ids.push_back(tok(rng));
      row.num_prompt_tokens = 20;
      switch (r % 6) {
        case 1: row.params.logit_bias = {{tok(rng), 50.0}, {tok(rng), -3.5}}; break;
        case 2: row.params.repetition_penalty = 1.7; break;
        case 3: row.params.frequency_penalty = 0.9; row.params.presence_penalty = 1.1; break;
        case 4:  // min_tokens masks the EOS ids: the argmax among the rest
          row.params.min_tokens = 50;
          row.eos = {tok(rng)};
          row.logits[row.eos[0]] = 100.0f;
          break;
        case 5: row.params.repetition_penalty = 0.6; row.params.logit_bias = {{tok(rng), 7.0}}; break;
        default: break;
      }
      if (vocab == 1 && r % 6 == 4) row.params.min_tokens = 0;  // nothing else left to sample
      rows.push_back(row);
    }
    // Ties: the lowest id wins.
    rows[0].logits.assign(vocab, 1.0f);
    auto [cpu, gpu] = run(rows, vocab);
    ASSERT_EQ(gpu.size(), rows.size());
    for (size_t r = 0; r < rows.size(); ++r) {
      const std::string what = "vocab " + std::to_string(vocab) + " row " + std::to_string(r);
      EXPECT_EQ(cpu[r].token_id, gpu[r].token_id) << what;
      expect_same_logprobs(cpu[r], gpu[r], what);
    }
    EXPECT_EQ(gpu[0].token_id, 0);
  }
}

TEST_F(CudaSamplerTest, RandomDrawsMatchReference) {
  std::mt19937 rng(2);
  struct Config {
    double temperature, top_p, min_p;
    int top_k;
  };
  const std::vector<Config> configs = {
      {1.0, 1.0, 0.0, -1}, {0.7, 1.0, 0.0, 50}, {1.3, 0.9, 0.0, -1}, {1.0, 1.0, 0.05, -1},
      {1.0, 1.0, 0.0, 1},  {1.0, 0.01, 0.0, -1}, {0.8, 0.95, 0.02, 40}, {2.5, 0.5, 0.0, 1000},
      {0.05, 1.0, 0.0, -1}};
  int compared = 0, mismatched = 0;
  for (int vocab : {5, 1000, 128256}) {
    for (float stddev : {0.1f, 3.0f}) {
      std::vector<TestRow> rows;
      for (size_t c = 0; c < configs.size(); ++c) {
        for (int k = 0; k < 8; ++k) {
          TestRow row;
          row.logits = normal_logits(vocab, stddev, rng);
          row.params.temperature = configs[c].temperature;
          row.params.top_p = configs[c].top_p;
          row.params.min_p = configs[c].min_p;
          row.params.top_k = configs[c].top_k;
          row.seed = 1000 * c + k;
          row.num_logprobs = k % 2 ? 5 : -1;
          if (k == 3) {
            std::uniform_int_distribution<int> tok(0, vocab - 1);
            for (int t = 0; t < 12; ++t) row.token_ids.push_back(tok(rng));
            row.num_prompt_tokens = 6;
            row.params.repetition_penalty = 1.3;
            row.params.presence_penalty = 0.5;
          }
          rows.push_back(row);
        }
      }
      auto [cpu, gpu] = run(rows, vocab);
      for (size_t r = 0; r < rows.size(); ++r) {
        ++compared;
        if (cpu[r].token_id != gpu[r].token_id) {
          ++mismatched;
          continue;
        }
        expect_same_logprobs(cpu[r], gpu[r], "vocab " + std::to_string(vocab) + " row " + std::to_string(r));
      }
    }
  }
  // The two differ only in float vs double weights: a draw lands on another token only when the
  // uniform falls within rounding of a cumulative boundary.
  EXPECT_LE(mismatched, compared / 200) << mismatched << " of " << compared << " draws differ";
  std::printf("random draws: %d of %d identical to the reference\n", compared - mismatched, compared);
}

TEST_F(CudaSamplerTest, ForcedRowsScoreTheGivenTokenWithTies) {
  std::mt19937 rng(3);
  const int vocab = 50000;
  std::vector<TestRow> rows;
  for (int r = 0; r < 16; ++r) {
    TestRow row;
    row.logits = normal_logits(vocab, 1.5f, rng);
    // Ties among the top: several tokens share the maximum and the 3rd value.
    for (int t : {11, 4000, 49999}) row.logits[t] = 9.0f;
    for (int t : {12, 13}) row.logits[t] = 8.0f;
    row.forced = (r * 977) % vocab;
    row.params.temperature = 1.0;  // ignored for forced rows
    row.params.repetition_penalty = 2.0;
    row.num_logprobs = r % 21;
    rows.push_back(row);
  }
  auto [cpu, gpu] = run(rows, vocab);
  for (size_t r = 0; r < rows.size(); ++r) {
    EXPECT_EQ(gpu[r].token_id, rows[r].forced);
    expect_same_logprobs(cpu[r], gpu[r], "row " + std::to_string(r));
  }
  ASSERT_GE(gpu[5].top.size(), 5u);
  EXPECT_EQ(gpu[5].top[0].token_id, 11);
  EXPECT_EQ(gpu[5].top[1].token_id, 4000);
  EXPECT_EQ(gpu[5].top[2].token_id, 49999);
  EXPECT_EQ(gpu[5].top[2].rank, 1);
  EXPECT_EQ(gpu[5].top[3].rank, 4);
}

TEST_F(CudaSamplerTest, DrawsFollowTheSoftmax) {
  // 40000 draws from one 10-token row (each from its own seed): frequencies within 5 standard
  // errors of the exact probabilities, computed here in double.
  const std::vector<float> logits = {0.5f, -1.0f, 2.0f, 0.0f, 1.0f, -3.0f, 1.5f, 0.25f, -0.5f, 0.75f};
  const int vocab = static_cast<int>(logits.size());
  const double temperature = 0.8;
  std::vector<TestRow> rows(40000);
  for (size_t r = 0; r < rows.size(); ++r) {
    rows[r].logits = logits;
    rows[r].params.temperature = temperature;
    rows[r].seed = 77 + r;
  }
  auto [cpu, gpu] = run(rows, vocab);
  std::vector<double> p(vocab);
  double z = 0.0;
  for (int i = 0; i < vocab; ++i) z += p[i] = std::exp(logits[i] / temperature);
  std::vector<int> counts(vocab, 0);
  for (const SampleResult& s : gpu) ++counts.at(s.token_id);
  for (int i = 0; i < vocab; ++i) {
    const double expect = p[i] / z, n = static_cast<double>(rows.size());
    const double se = std::sqrt(expect * (1 - expect) / n);
    EXPECT_NEAR(counts[i] / n, expect, 5 * se + 1e-9) << "token " << i;
  }
}

TEST_F(CudaSamplerTest, RowResultsDoNotDependOnTheBatch) {
  std::mt19937 rng(4);
  const int vocab = 32768;
  std::vector<TestRow> batch;
  for (int r = 0; r < 64; ++r) {
    TestRow row;
    row.logits = normal_logits(vocab, 2.0f, rng);
    row.params.temperature = r % 2 ? 0.9 : 0.0;
    row.params.top_p = 0.8;
    row.seed = r;
    row.num_logprobs = 3;
    batch.push_back(row);
  }
  auto [cpu_all, gpu_all] = run(batch, vocab);
  for (int r : {0, 1, 17, 63}) {
    auto [cpu_one, gpu_one] = run({batch[r]}, vocab);
    EXPECT_EQ(gpu_one[0].token_id, gpu_all[r].token_id) << r;
    EXPECT_EQ(gpu_one[0].chosen.logprob, gpu_all[r].chosen.logprob) << r;  // bitwise
    ASSERT_EQ(gpu_one[0].top.size(), gpu_all[r].top.size());
    for (size_t j = 0; j < gpu_one[0].top.size(); ++j) {
      EXPECT_EQ(gpu_one[0].top[j].logprob, gpu_all[r].top[j].logprob) << r;
    }
  }
}

TEST_F(CudaSamplerTest, BadRowsThrowLikeTheReference) {
  const int vocab = 600;
  auto expect_throw = [&](TestRow row, const std::string& needle) {
    std::vector<TestRow> rows(3);
    for (TestRow& r : rows) {
      r.logits.assign(vocab, 0.5f);
      r.params.temperature = 0.0;
    }
    rows[1] = std::move(row);
    for (bool gpu : {false, true}) {
      std::vector<std::mt19937_64> rngs;
      try {
        sample_on(gpu, rows, vocab, &rngs);
        ADD_FAILURE() << (gpu ? "gpu" : "cpu") << ": no error; wanted " << needle;
      } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << (gpu ? "gpu: " : "cpu: ") << e.what();
      }
    }
  };
  TestRow nan_row;
  nan_row.logits.assign(vocab, 0.0f);
  nan_row.logits[417] = std::nanf("");
  nan_row.logits[500] = INFINITY;
  nan_row.params.temperature = 0.0;
  expect_throw(nan_row, "NaN: logits row 1 token 417");
  TestRow inf_row = nan_row;
  inf_row.logits[417] = 0.0f;
  expect_throw(inf_row, "+inf: logits row 1 token 500");
  TestRow all_neg;
  all_neg.logits.assign(vocab, -INFINITY);
  expect_throw(all_neg, "no finite logit: logits row 1");
  TestRow masked;
  masked.logits.assign(vocab, -INFINITY);
  masked.logits[5] = 1.0f;
  masked.params.temperature = 0.7;
  masked.params.min_tokens = 3;
  masked.params.stop_token_ids = {5};
  masked.token_ids = {1, 2};
  masked.num_prompt_tokens = 2;
  expect_throw(masked, "every token is -inf after the logits processors");
  // The sampler stays usable after an error.
  TestRow ok;
  ok.logits.assign(vocab, 0.0f);
  ok.logits[9] = 1.0f;
  ok.params.temperature = 0.0;
  auto [cpu, gpu] = run({ok}, vocab);
  EXPECT_EQ(gpu[0].token_id, 9);
}

}  // namespace
}  // namespace llmcore
