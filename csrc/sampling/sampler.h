// The sampler: logits processors (min_tokens, logit_bias, penalties, temperature) then
// top-k / top-p / min-p filtering and a draw from the sequence's own generator; plus the raw
// logprobs vLLM reports (log_softmax of the model's logits, before any processing).
//
// This is the reference (CPU) sampler. The CUDA sampler (backend/cuda/cuda_sampler.h,
// kernels/sampling) implements the same contract on logits that stay on the GPU.
#pragma once

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "engine/sampling_params.h"

namespace llmcore {

struct TokenLogprob {
  int32_t token_id = 0;
  float logprob = 0.0f;  // raw: log_softmax of the unprocessed logits
  int rank = 0;          // 1 + number of tokens with a strictly higher raw logprob
};

struct SampleRequest {
  const float* logits = nullptr;            // [V] raw logits of this row
  const SamplingParams* params = nullptr;
  const std::vector<int32_t>* token_ids = nullptr;  // prompt + output so far (penalties)
  int num_prompt_tokens = 0;
  std::mt19937_64* rng = nullptr;           // the sequence's generator
  const std::vector<int32_t>* eos_token_ids = nullptr;  // masked while min_tokens not reached
  int num_logprobs = -1;                    // -1: none; k >= 0: top-k (plus the chosen token)
  int32_t forced_token = -1;                // >= 0: score this token instead of sampling (prompt
                                            // logprobs): no processors, no draw
};

struct SampleResult {
  int32_t token_id = 0;
  TokenLogprob chosen;                      // the sampled token's raw logprob and rank
  std::vector<TokenLogprob> top;            // top num_logprobs by raw logprob, best first
};

// Samples one token per row. Rows are independent; the result depends only on each row's
// inputs and generator state (batch invariance). Greedy rows leave the generator untouched;
// every other row takes exactly one draw from it. A NaN or +inf raw logit throws RuntimeError
// naming the row.
//
// The draw: w = exp(x / T - max(x / T)) over the processed logits x; tokens with w < min_p drop
// out; the survivors in sampling order (higher x first, lower id on ties) are cut to the first
// top_k, then to the shortest prefix whose weight reaches top_p of theirs; the token is the first
// whose running weight exceeds u * (kept weight), u the generator's output as a double in [0, 1).
// Weights are summed as integers in units of 2^-40 (kMassScale): exact and order-free, so every
// implementation (this one, the CUDA one) cuts and draws at the same token for the same weights.
std::vector<SampleResult> sample(const std::vector<SampleRequest>& rows, int vocab_size);

// A token's weight in the draw as an integer: floor(w * 2^40), w in [0, 1].
constexpr double kMassScale = 1099511627776.0;  // 2^40
inline uint64_t weight_mass(double w) { return static_cast<uint64_t>(w * kMassScale); }

// The uniform in [0, 1) a random row's draw uses, from one generator output.
inline double draw_uniform(uint64_t bits) { return static_cast<double>(bits >> 11) * 0x1.0p-53; }

// Raw logprob of `token_id` with its rank, and the top-k (k may be 0), for one logits row: what
// sample() computes for a row with forced_token set (prompt logprobs), for a single row.
void raw_logprobs(const float* logits, int vocab_size, int32_t token_id, int k,
                  TokenLogprob* chosen, std::vector<TokenLogprob>* top);

}  // namespace llmcore
