// Raw logprobs: log_softmax of the model's unprocessed logits, as vLLM reports them. The
// normalizer is computed in double; each logprob is stored as float.
#pragma once

#include <cstdint>
#include <vector>

#include "sampling/sampler.h"

namespace llmcore {

// log(sum_i exp(logits[i])) in double. Throws RuntimeError ("model produced ...") when the row
// holds a NaN or +inf, or no finite logit at all; `row` (-1: none) is named in the message.
// logits: [vocab_size].
double log_sum_exp(const float* logits, int vocab_size, int row);

// Raw logprob of `token_id` and its rank: 1 + number of tokens with a strictly higher logit.
TokenLogprob token_logprob(const float* logits, int vocab_size, double lse, int32_t token_id);

// The k tokens with the highest raw logprob (all of them when k >= vocab_size), best first, ties
// by lower token id; each rank as token_logprob gives it (tied tokens share one). `order` is
// reusable scratch.
void top_logprobs(const float* logits, int vocab_size, double lse, int k,
                  std::vector<int32_t>* order, std::vector<TokenLogprob>* top);

}  // namespace llmcore
