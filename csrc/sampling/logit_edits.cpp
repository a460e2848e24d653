#include "sampling/logit_edits.h"

#include "core/error.h"

namespace llmcore {
namespace {

// Token ids reaching the sampler were validated against this vocabulary (SamplingParams::validate,
// prompt checks, the sampler's own output); one outside it is an engine bug, not user input.
void check_token(int32_t id, int vocab_size, const char* what) {
  LLMCORE_CHECK(id >= 0 && id < vocab_size, what, " token id ", id, " outside [0, ", vocab_size,
                ")");
}

// Number of tokens generated so far (0 when the row carries no token history).
int num_output_tokens(const SampleRequest& row) {
  if (row.token_ids == nullptr) return 0;
  const int n = static_cast<int>(row.token_ids->size()) - row.num_prompt_tokens;
  LLMCORE_CHECK(n >= 0, "num_prompt_tokens ", row.num_prompt_tokens, " > token_ids.size() ",
                row.token_ids->size());
  return n;
}

}  // namespace

PenaltyFactors penalty_factors(const SampleRequest& row) {
  PenaltyFactors f;
  if (row.token_ids == nullptr) return f;
  f.repetition = row.params->repetition_penalty;
  f.frequency = row.params->frequency_penalty;
  f.presence = row.params->presence_penalty;
  return f;
}

void collect_logit_edits(const SampleRequest& row, int vocab_size, EditScratch* scratch,
                         std::vector<LogitEdit>* edits) {
  const SamplingParams& params = *row.params;
  const size_t first = edits->size();
  if (scratch->slot.size() < static_cast<size_t>(vocab_size)) scratch->slot.resize(vocab_size, -1);
  std::vector<int32_t>& slot = scratch->slot;
  auto edit_for = [&](int32_t id) -> LogitEdit& {
    if (slot[id] < 0) {
      slot[id] = static_cast<int32_t>(edits->size() - first);
      LogitEdit e;
      e.token_id = id;
      edits->push_back(e);
    }
    return (*edits)[first + slot[id]];
  };
  // Leaves the scratch all -1 again on every exit, a throw included.
  struct Reset {
    std::vector<int32_t>& slot;
    const std::vector<LogitEdit>& edits;
    size_t first;
    ~Reset() {
      for (size_t i = first; i < edits.size(); ++i) slot[edits[i].token_id] = -1;
    }
  } reset{slot, *edits, first};

  // min_tokens: while fewer than min_tokens tokens have been generated, every stop token
  // (stop_token_ids and the EOS ids, also under ignore_eos, as vLLM's all_stop_token_ids always
  // holds them) is masked.
  if (num_output_tokens(row) < params.min_tokens) {
    for (int32_t id : params.stop_token_ids) {
      check_token(id, vocab_size, "stop_token_ids");
      edit_for(id).masked = 1;
    }
    if (row.eos_token_ids != nullptr) {
      for (int32_t id : *row.eos_token_ids) {
        check_token(id, vocab_size, "eos");
        edit_for(id).masked = 1;
      }
    }
  }
  for (const auto& [id, bias] : params.logit_bias) {
    check_token(id, vocab_size, "logit_bias");
    edit_for(id).bias += bias;
  }
  if (row.token_ids != nullptr) {
    const std::vector<int32_t>& tokens = *row.token_ids;  // [prompt..., output...]
    const size_t first_output = static_cast<size_t>(row.num_prompt_tokens);
    LLMCORE_CHECK(first_output <= tokens.size(), "num_prompt_tokens ", first_output,
                  " > token_ids.size() ", tokens.size());
    const bool repetition = params.repetition_penalty != 1.0;
    const bool frequency_presence = params.frequency_penalty != 0.0 || params.presence_penalty != 0.0;
    if (repetition) {
      for (int32_t id : tokens) {
        check_token(id, vocab_size, "token_ids");
        edit_for(id).repeated = 1;
      }
    }
    if (frequency_presence) {
      for (size_t i = first_output; i < tokens.size(); ++i) {
        check_token(tokens[i], vocab_size, "token_ids");
        ++edit_for(tokens[i]).count;
      }
    }
  }
}

}  // namespace llmcore
