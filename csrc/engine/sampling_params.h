// SamplingParams: vLLM's field names, defaults and validation ranges.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace llmcore {

// Most top logprobs a request may ask for (vLLM's default max_logprobs).
constexpr int kMaxLogprobs = 20;

struct SamplingParams {
  int n = 1;
  double presence_penalty = 0.0;    // [-2, 2], on output tokens
  double frequency_penalty = 0.0;   // [-2, 2], on output tokens
  double repetition_penalty = 1.0;  // > 0, on prompt and output tokens
  double temperature = 1.0;         // >= 0; 0 is greedy
  double top_p = 1.0;               // (0, 1]
  int top_k = 0;                    // 0 or -1 disable; else >= 1
  double min_p = 0.0;               // [0, 1]
  std::optional<int64_t> seed;      // per-request generator when set
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  std::optional<int> max_tokens = 16;  // >= 1; unset: up to max_model_len
  int min_tokens = 0;                  // [0, max_tokens]
  std::optional<int> logprobs;         // [0, kMaxLogprobs] top logprobs per output token
  std::optional<int> prompt_logprobs;  // [0, kMaxLogprobs] top logprobs per prompt token
  bool detokenize = true;
  bool skip_special_tokens = true;
  bool spaces_between_special_tokens = true;
  bool include_stop_str_in_output = false;
  std::map<int32_t, double> logit_bias;  // token id -> bias added to the logit, [-100, 100]

  // Throws ValueError naming the field, its value and the allowed range. vocab_size > 0 also
  // checks token ids (stop_token_ids, logit_bias keys) against the vocabulary.
  void validate(int64_t vocab_size = 0) const;

  bool greedy() const { return temperature < 1e-5; }
};

}  // namespace llmcore
