// Plain data the CUDA sampler (kernels/sampling/sampler.cu) reads and writes: one GpuSampleRow
// per row to sample or score, one GpuSampleResult back. Shared by the launcher's callers on the
// host (backend/cuda/cuda_sampler.cpp) and the kernel; the semantics are the reference sampler's
// (csrc/sampling/sampler.h).
#pragma once

#include <cstdint>

#include "sampling/logit_edits.h"

namespace llmcore::kernels {

constexpr int kMaxSampleTopLogprobs = 20;  // SamplingParams' kMaxLogprobs

enum GpuSampleMode : int32_t {
  kSampleGreedy = 0,  // argmax of the processed logits (lowest id on ties)
  kSampleRandom = 1,  // temperature, min-p, top-k, top-p, one draw with `u`
  kSampleForced = 2,  // score forced_token (prompt logprobs): no processing
};

// Why a row could not be sampled (GpuSampleResult::error); the host turns it into the reference
// sampler's RuntimeError.
enum GpuSampleError : int32_t {
  kSampleOk = 0,
  kSampleNaN = 1,          // raw logit NaN at error_index (the first bad one)
  kSamplePosInf = 2,       // raw logit +inf at error_index
  kSampleAllNegInf = 3,    // every raw logit -inf
  kSampleNoCandidate = 4,  // every processed logit -inf
};

struct GpuSampleRow {
  const float* logits = nullptr;  // [V] raw logits (device)
  float* processed = nullptr;     // [V] device scratch for the processed row; used if num_edits > 0
  const LogitEdit* edits = nullptr;  // [num_edits] (device), one per distinct token
  int32_t num_edits = 0;
  int32_t mode = kSampleGreedy;
  int32_t forced_token = -1;
  int32_t top_k = -1;             // < 1: off
  int32_t num_logprobs = -1;      // -1: none; 0..kMaxSampleTopLogprobs
  float temperature = 1.0f;
  float top_p = 1.0f;
  float min_p = 0.0f;
  PenaltyFactors penalties;
  double u = 0.0;                 // the draw's uniform in [0, 1)
};

struct GpuSampleResult {
  int32_t token_id;
  int32_t rank;                   // 1 + tokens with a strictly higher raw logit
  float logprob;                  // raw logprob of token_id
  int32_t error;                  // GpuSampleError
  int32_t error_index;
  int32_t num_top;
  int32_t top_ids[kMaxSampleTopLogprobs];
  float top_logprobs[kMaxSampleTopLogprobs];
  int32_t top_ranks[kMaxSampleTopLogprobs];
};

}  // namespace llmcore::kernels
