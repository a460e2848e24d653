// Sequence: one generated output of a request, as the scheduler, block manager and sampler see
// it. The engine owns sequences; the scheduler and block manager hold pointers.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "engine/sampling_params.h"

namespace llmcore {

enum class SequenceStatus { kWaiting, kRunning, kFinished };
enum class FinishReason { kNone, kStop, kLength, kAbort };

struct Sequence {
  int64_t seq_id = 0;
  int index = 0;                      // which of the request's n outputs
  const SamplingParams* params = nullptr;  // owned by the request

  std::vector<int32_t> token_ids;     // prompt followed by output tokens
  int num_prompt_tokens = 0;
  // Tokens whose KV is in the cache. Prefill, chunked prefill, decode and recompute after
  // preemption all just move this toward num_tokens().
  int num_computed_tokens = 0;
  int num_cached_tokens = -1;         // prefix-cache hit at first admission (-1: not admitted)
  bool use_prefix_cache = true;       // false when prompt logprobs are wanted

  SequenceStatus status = SequenceStatus::kWaiting;
  std::vector<int32_t> block_table;   // KV block ids, in position order
  std::vector<uint64_t> block_hashes; // hash chain of the full blocks of token_ids (prefix caching)

  // Sampling state: the per-sequence generator (seeded from SamplingParams::seed when set) and
  // the running log-probability of the sampled tokens.
  std::mt19937_64 rng;
  double cumulative_logprob = 0.0;

  FinishReason finish_reason = FinishReason::kNone;
  int32_t stop_token = -1;            // the stop token id that finished it, if any
  std::string stop_str;               // the stop string that finished it, if any

  int num_tokens() const { return static_cast<int>(token_ids.size()); }
  int num_output_tokens() const { return num_tokens() - num_prompt_tokens; }
  bool finished() const { return status == SequenceStatus::kFinished; }
};

}  // namespace llmcore
