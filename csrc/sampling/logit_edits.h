// Logit edits: the logits processors (min_tokens, logit_bias, repetition / frequency / presence
// penalties) as a sparse list of per-token changes. A row's processors touch only the tokens it
// names (stop ids, biased ids, tokens already in the sequence), so both samplers collect one
// LogitEdit per distinct touched token on the host and apply it to the raw logit: the CPU sampler
// in double, the CUDA sampler (kernels/sampling) on the GPU with the same function.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "sampling/sampler.h"

#if defined(__CUDACC__)
#define LLMCORE_HOST_DEVICE __host__ __device__
#else
#define LLMCORE_HOST_DEVICE
#endif

namespace llmcore {

// Everything the processors do to one token. Plain data, copied to the GPU as is.
struct LogitEdit {
  int32_t token_id = 0;
  int32_t count = 0;     // occurrences among the output tokens (frequency / presence penalties)
  int32_t masked = 0;    // min_tokens not reached and this is a stop / EOS token: -inf
  int32_t repeated = 0;  // occurs in prompt or output (repetition penalty)
  double bias = 0.0;     // logit_bias
};

// The row-wide factors the edits use.
struct PenaltyFactors {
  double repetition = 1.0;
  double frequency = 0.0;
  double presence = 0.0;
};

// One token's processed logit from its raw logit, in vLLM v1's order: min_tokens mask,
// logit_bias, repetition penalty (positive logits divided, others multiplied), then
// frequency * count and presence for tokens the output holds.
LLMCORE_HOST_DEVICE inline double apply_logit_edit(double x, const LogitEdit& e, const PenaltyFactors& f) {
  if (e.masked) x = -static_cast<double>(INFINITY);
  x += e.bias;
  if (e.repeated && f.repetition != 1.0) x = x > 0.0 ? x / f.repetition : x * f.repetition;
  if (e.count > 0) {
    x -= f.frequency * e.count;
    x -= f.presence;
  }
  return x;
}

// Per-thread scratch so collecting allocates nothing once it has seen the vocabulary size;
// `slot` is all -1 between calls.
struct EditScratch {
  std::vector<int32_t> slot;  // [vocab_size] token -> index in the edit list, or -1
};

// The row's penalty factors (all neutral when the row has no token history).
PenaltyFactors penalty_factors(const SampleRequest& row);

// Appends one LogitEdit per distinct token the row's processors touch to *edits (in first-touch
// order). Token ids are checked against the vocabulary (RuntimeError: an engine bug, since user
// input was validated before).
void collect_logit_edits(const SampleRequest& row, int vocab_size, EditScratch* scratch,
                         std::vector<LogitEdit>* edits);

}  // namespace llmcore
