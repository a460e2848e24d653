// Helpers shared by the sampler tests: one-row requests and naive double-precision references.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "engine/sampling_params.h"
#include "sampling/sampler.h"

namespace llmcore::testing {

// Everything a SampleRequest points at, kept alive by the test.
struct Row {
  std::vector<float> logits;
  SamplingParams params;
  std::vector<int32_t> token_ids;  // prompt + output
  int num_prompt_tokens = 0;
  std::vector<int32_t> eos;
  std::mt19937_64 rng{1234};
  int num_logprobs = -1;

  SampleRequest request() {
    SampleRequest r;
    r.logits = logits.data();
    r.params = &params;
    r.token_ids = &token_ids;
    r.num_prompt_tokens = num_prompt_tokens;
    r.rng = &rng;
    r.eos_token_ids = &eos;
    r.num_logprobs = num_logprobs;
    return r;
  }

  SampleResult sample_one() {
    return sample({request()}, static_cast<int>(logits.size())).at(0);
  }
};

inline SamplingParams greedy_params() {
  SamplingParams p;
  p.temperature = 0.0;
  return p;
}

// First index of the maximum (lowest id on ties).
inline int32_t naive_argmax(const std::vector<double>& x) {
  int32_t best = 0;
  for (size_t i = 1; i < x.size(); ++i) {
    if (x[i] > x[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

// The spec's uniform from one generator output.
inline double uniform_from(uint64_t bits) { return static_cast<double>(bits >> 11) * 0x1.0p-53; }

inline std::vector<float> random_logits(std::mt19937_64& gen, int vocab_size, double stddev) {
  std::normal_distribution<double> dist(0.0, stddev);
  std::vector<float> x(vocab_size);
  for (float& v : x) v = static_cast<float>(dist(gen));
  return x;
}

}  // namespace llmcore::testing
