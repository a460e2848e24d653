// The sampler: logits processors (min_tokens, logit_bias, penalties, temperature) then
// top-k / top-p / min-p filtering and a draw from the sequence's own generator; plus the raw
// logprobs vLLM reports (log_softmax of the model's logits, before any processing).
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
std::vector<SampleResult> sample(const std::vector<SampleRequest>& rows, int vocab_size);

// Raw logprob of `token_id` with its rank, and the top-k (k may be 0), for one logits row.
// Used for prompt logprobs.
void raw_logprobs(const float* logits, int vocab_size, int32_t token_id, int k,
                  TokenLogprob* chosen, std::vector<TokenLogprob>* top);

}  // namespace llmcore
