#include "sampling/logits_processors.h"

#include <limits>

#include "core/error.h"

namespace llmcore {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Token ids reaching the sampler were validated against this vocabulary (SamplingParams::validate,
// prompt checks, the sampler's own output); one outside it is an engine bug, not user input.
void check_token(int32_t id, int vocab_size, const char* what) {
  LLMCORE_CHECK(id >= 0 && id < vocab_size, what, " token id ", id, " outside [0, ", vocab_size,
                ")");
}

}  // namespace

int num_output_tokens(const SampleRequest& row) {
  if (row.token_ids == nullptr) return 0;
  const int n = static_cast<int>(row.token_ids->size()) - row.num_prompt_tokens;
  LLMCORE_CHECK(n >= 0, "num_prompt_tokens ", row.num_prompt_tokens, " > token_ids.size() ",
                row.token_ids->size());
  return n;
}

void apply_min_tokens(const SampleRequest& row, int vocab_size, double* logits) {
  const SamplingParams& params = *row.params;
  if (num_output_tokens(row) >= params.min_tokens) return;
  for (int32_t id : params.stop_token_ids) {
    check_token(id, vocab_size, "stop_token_ids");
    logits[id] = kNegInf;
  }
  if (row.eos_token_ids != nullptr) {
    for (int32_t id : *row.eos_token_ids) {
      check_token(id, vocab_size, "eos");
      logits[id] = kNegInf;
    }
  }
}

void apply_logit_bias(const SamplingParams& params, int vocab_size, double* logits) {
  for (const auto& [id, bias] : params.logit_bias) {
    check_token(id, vocab_size, "logit_bias");
    logits[id] += bias;
  }
}

void apply_penalties(const SampleRequest& row, int vocab_size, PenaltyScratch* scratch,
                     double* logits) {
  const SamplingParams& params = *row.params;
  if (row.token_ids == nullptr) return;
  const std::vector<int32_t>& tokens = *row.token_ids;  // [prompt..., output...]
  const size_t first_output = static_cast<size_t>(row.num_prompt_tokens);
  LLMCORE_CHECK(first_output <= tokens.size(), "num_prompt_tokens ", first_output,
                " > token_ids.size() ", tokens.size());
  const bool repetition = params.repetition_penalty != 1.0;
  const bool frequency_presence = params.frequency_penalty != 0.0 || params.presence_penalty != 0.0;
  if (!repetition && !frequency_presence) return;
  // Checked before any scratch entry is touched, so a throw leaves the scratch all-zero.
  for (int32_t id : tokens) check_token(id, vocab_size, "token_ids");
  if (scratch->counts.size() < static_cast<size_t>(vocab_size)) {
    scratch->counts.resize(vocab_size, 0);
    scratch->seen.resize(vocab_size, 0);
  }

  if (repetition) {
    const double p = params.repetition_penalty;
    std::vector<uint8_t>& seen = scratch->seen;
    for (int32_t id : tokens) {
      if (seen[id]) continue;
      seen[id] = 1;
      logits[id] = logits[id] > 0.0 ? logits[id] / p : logits[id] * p;
    }
    for (int32_t id : tokens) seen[id] = 0;
  }

  if (frequency_presence) {
    std::vector<int32_t>& counts = scratch->counts;
    for (size_t i = first_output; i < tokens.size(); ++i) ++counts[tokens[i]];
    // Each distinct output token once; zeroing its count marks it done and leaves the scratch clean.
    for (size_t i = first_output; i < tokens.size(); ++i) {
      const int32_t id = tokens[i];
      if (counts[id] == 0) continue;
      logits[id] -= params.frequency_penalty * counts[id];
      logits[id] -= params.presence_penalty;
      counts[id] = 0;
    }
  }
}

void apply_logits_processors(const SampleRequest& row, int vocab_size, PenaltyScratch* scratch,
                             double* logits) {
  apply_min_tokens(row, vocab_size, logits);
  apply_logit_bias(*row.params, vocab_size, logits);
  apply_penalties(row, vocab_size, scratch, logits);
}

}  // namespace llmcore
