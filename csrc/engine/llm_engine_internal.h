// Private to the engine's .cpp files: the request and sequence state the loop thread owns,
// and small helpers both the step (llm_engine.cpp) and output processing
// (llm_engine_output.cpp) use.
#pragma once

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "engine/llm_engine.h"

namespace llmcore {
namespace engine_detail {

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

inline const char* reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kAbort: return "abort";
    case FinishReason::kNone: return "";
  }
  return "";
}

inline bool contains(const std::vector<int32_t>& v, int32_t x) { return std::find(v.begin(), v.end(), x) != v.end(); }

// The delta of output `index` inside a request's delta, created on first use.
inline SequenceDelta& seq_delta(RequestDelta& d, int index) {
  for (SequenceDelta& s : d.seqs) {
    if (s.index == index) return s;
  }
  d.seqs.emplace_back();
  d.seqs.back().index = index;
  return d.seqs.back();
}

}  // namespace engine_detail

struct LLMEngine::SeqState {
  Sequence seq;
  std::unique_ptr<IncrementalDetokenizer> detok;
};

struct LLMEngine::Request {
  std::string id;
  SamplingParams params;
  int max_tokens = 0;                        // resolved: params.max_tokens or what max_model_len leaves
  std::vector<std::unique_ptr<SeqState>> seqs;
  bool forked = false;                       // n > 1 children created
  int num_finished = 0;
  int prompt_logprobs_next = 1;              // next prompt position whose logprobs are due
  std::vector<PositionLogprobs> prompt_logprobs;
  std::vector<int32_t> stop_masked_ids;      // eos ids masked while min_tokens is not reached
  double arrival_time = 0, first_scheduled_time = 0, first_token_time = 0;
};

}  // namespace llmcore
