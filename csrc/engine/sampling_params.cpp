// SamplingParams::validate: vLLM's ranges. Float checks are written as `!(lo <= x && x <= hi)`
// so that NaN, which compares false with everything, fails every one of them.
#include "engine/sampling_params.h"

#include <cmath>

#include "core/error.h"

namespace llmcore {
namespace {

constexpr double kMaxLogitBias = 100.0;

// [lo, hi] with both ends finite, so infinities fail as well as NaN.
void check_closed(const char* name, double x, double lo, double hi) {
  LLMCORE_CHECK_ARG(lo <= x && x <= hi, name, " must be in [", lo, ", ", hi, "], got ", x);
}

void check_token_id(const char* name, size_t index, int32_t id, int64_t vocab_size) {
  if (vocab_size > 0) {
    LLMCORE_CHECK_ARG(id >= 0 && id < vocab_size, name, "[", index, "] must be a token id in [0, ",
                      vocab_size, "), got ", id);
  } else {
    LLMCORE_CHECK_ARG(id >= 0, name, "[", index, "] must be a token id >= 0, got ", id);
  }
}

}  // namespace

void SamplingParams::validate(int64_t vocab_size) const {
  // As vLLM: no upper bound here; the engine refuses n above its max_num_seqs.
  LLMCORE_CHECK_ARG(n >= 1, "n must be >= 1, got ", n);
  check_closed("presence_penalty", presence_penalty, -2.0, 2.0);
  check_closed("frequency_penalty", frequency_penalty, -2.0, 2.0);
  LLMCORE_CHECK_ARG(repetition_penalty > 0.0 && std::isfinite(repetition_penalty),
                    "repetition_penalty must be > 0 and finite, got ", repetition_penalty);
  LLMCORE_CHECK_ARG(temperature >= 0.0 && std::isfinite(temperature),
                    "temperature must be >= 0 and finite, got ", temperature);
  LLMCORE_CHECK_ARG(top_p > 0.0 && top_p <= 1.0, "top_p must be in (0, 1], got ", top_p);
  // Any k >= 1 is accepted, also beyond the vocabulary: it means "at most k".
  LLMCORE_CHECK_ARG(top_k >= -1, "top_k must be -1 or 0 (disabled) or >= 1, got ", top_k);
  check_closed("min_p", min_p, 0.0, 1.0);
  // seed: any int64 is a valid seed.

  for (size_t i = 0; i < stop.size(); ++i) {
    LLMCORE_CHECK_ARG(!stop[i].empty(), "stop[", i, "] must be a non-empty string, got \"\"");
  }
  for (size_t i = 0; i < stop_token_ids.size(); ++i) {
    check_token_id("stop_token_ids", i, stop_token_ids[i], vocab_size);
  }

  if (max_tokens) {
    LLMCORE_CHECK_ARG(*max_tokens >= 1, "max_tokens must be >= 1, got ", *max_tokens);
    LLMCORE_CHECK_ARG(min_tokens >= 0 && min_tokens <= *max_tokens,
                      "min_tokens must be in [0, max_tokens=", *max_tokens, "], got ", min_tokens);
  } else {
    LLMCORE_CHECK_ARG(min_tokens >= 0, "min_tokens must be >= 0, got ", min_tokens);
  }
  if (logprobs) {
    LLMCORE_CHECK_ARG(*logprobs >= 0 && *logprobs <= kMaxLogprobs, "logprobs must be in [0, ",
                      kMaxLogprobs, "], got ", *logprobs);
  }
  if (prompt_logprobs) {
    LLMCORE_CHECK_ARG(*prompt_logprobs >= 0 && *prompt_logprobs <= kMaxLogprobs,
                      "prompt_logprobs must be in [0, ", kMaxLogprobs, "], got ", *prompt_logprobs);
  }

  for (const auto& [id, bias] : logit_bias) {
    if (vocab_size > 0) {
      LLMCORE_CHECK_ARG(id >= 0 && id < vocab_size, "logit_bias key must be a token id in [0, ",
                        vocab_size, "), got ", id);
    } else {
      LLMCORE_CHECK_ARG(id >= 0, "logit_bias key must be a token id >= 0, got ", id);
    }
    LLMCORE_CHECK_ARG(-kMaxLogitBias <= bias && bias <= kMaxLogitBias, "logit_bias[", id,
                      "] must be in [", -kMaxLogitBias, ", ", kMaxLogitBias, "], got ", bias);
  }
}

}  // namespace llmcore
