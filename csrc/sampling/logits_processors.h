// Logits processors: what turns a row of raw logits into the processed logits that greedy and
// random sampling see (vLLM v1 order: min_tokens, logit_bias, then repetition / frequency /
// presence penalties). Temperature and the top-k / top-p / min-p filters belong to the draw and
// live in sampler.cpp.
#pragma once

#include <cstdint>
#include <vector>

#include "sampling/sampler.h"

namespace llmcore {

// Per-thread scratch for the penalties, so a step allocates nothing once it has seen the
// vocabulary size. Both arrays are all-zero between calls.
struct PenaltyScratch {
  std::vector<int32_t> counts;  // [vocab_size] occurrences of each token in the output so far
  std::vector<uint8_t> seen;    // [vocab_size] token occurs in prompt or output
};

// Number of tokens generated so far for `row` (0 when it carries no token history).
int num_output_tokens(const SampleRequest& row);

// While fewer than params.min_tokens tokens have been generated, sets -inf on every stop token:
// params.stop_token_ids and *eos_token_ids (also under ignore_eos, as vLLM's all_stop_token_ids
// always holds the EOS ids). logits: [vocab_size].
void apply_min_tokens(const SampleRequest& row, int vocab_size, double* logits);

// Adds params.logit_bias. logits: [vocab_size].
void apply_logit_bias(const SamplingParams& params, int vocab_size, double* logits);

// repetition_penalty on every distinct token of prompt + output (positive logits divided by it,
// others multiplied), then logit -= frequency_penalty * count and -= presence_penalty * (count > 0)
// with counts over the output tokens only. logits: [vocab_size].
void apply_penalties(const SampleRequest& row, int vocab_size, PenaltyScratch* scratch,
                     double* logits);

// All of the above, in vLLM v1's order.
void apply_logits_processors(const SampleRequest& row, int vocab_size, PenaltyScratch* scratch,
                             double* logits);

}  // namespace llmcore
