// LLMEngine's output processing: what happens to each sampled token (stop checks, incremental
// detokenization, logprobs) and the per-step deltas the caller receives.
#include "engine/llm_engine.h"

#include "core/error.h"
#include "engine/llm_engine_internal.h"

namespace llmcore {

using engine_detail::contains;
using engine_detail::reason_name;
using engine_detail::seq_delta;

RequestDelta& LLMEngine::delta_for(std::unordered_map<Request*, RequestDelta>& deltas, Request& req) {
  auto it = deltas.find(&req);
  if (it != deltas.end()) return it->second;
  RequestDelta& d = deltas[&req];
  d.request_id = req.id;
  d.arrival_time = req.arrival_time;
  return d;
}

PositionLogprobs LLMEngine::make_position(const TokenLogprob& chosen, const std::vector<TokenLogprob>& top) const {
  PositionLogprobs p;
  p.entries.push_back(chosen);
  for (const TokenLogprob& t : top) {
    if (t.token_id != chosen.token_id) p.entries.push_back(t);
  }
  for (const TokenLogprob& t : p.entries) p.decoded.push_back(decode_one(t.token_id));
  return p;
}

std::string LLMEngine::decode_one(int32_t token_id) const {
  // The model's vocabulary may be larger than the tokenizer's (padded embeddings): those ids
  // have no text, as in HF.
  if (token_id < 0 || token_id >= tokenizer_->vocab_size()) return std::string();
  return tokenizer_->decode({token_id}, false);
}

void LLMEngine::finish_seq(Request& req, SeqState& st, FinishReason reason) {
  Sequence& seq = st.seq;
  if (seq.finished()) return;
  scheduler_->finish(&seq);
  seq.finish_reason = reason;
  ++req.num_finished;
}

void LLMEngine::append_token(Request& req, SeqState& st, const SampleResult& r, RequestDelta& delta) {
  Sequence& seq = st.seq;
  const SamplingParams& p = req.params;
  const int32_t tok = r.token_id;
  seq.token_ids.push_back(tok);
  seq.cumulative_logprob += r.chosen.logprob;
  ++counters_.num_generation_tokens;

  SequenceDelta& sd = seq_delta(delta, seq.index);
  sd.token_ids.push_back(tok);
  if (p.logprobs) sd.logprobs.push_back(make_position(r.chosen, r.top));

  const int num_out = seq.num_output_tokens();
  const bool stops_armed = num_out >= p.min_tokens;  // min_tokens suppresses every stop but length
  FinishReason reason = FinishReason::kNone;
  if (stops_armed && !p.ignore_eos && contains(eos_token_ids_, tok)) {
    reason = FinishReason::kStop;
  } else if (stops_armed && contains(p.stop_token_ids, tok)) {
    reason = FinishReason::kStop;
    sd.stop_token = tok;
  }
  // A stop token's own text is left out unless include_stop_str_in_output (as vLLM does).
  IncrementalDetokenizer::Update upd;
  // Ids past the tokenizer (a model's padded embedding rows) have no text.
  const bool has_text = tok < tokenizer_->vocab_size();
  if (st.detok && has_text && (reason == FinishReason::kNone || p.include_stop_str_in_output)) {
    upd = st.detok->append(tok, stops_armed && reason == FinishReason::kNone);
    sd.text += upd.text_delta;
    if (upd.stopped) {
      reason = FinishReason::kStop;
      sd.stop_str = upd.stop_str;
      sd.has_stop_str = true;
    }
  }
  if (reason == FinishReason::kNone && (num_out >= req.max_tokens || seq.num_tokens() >= max_model_len_)) {
    reason = FinishReason::kLength;
  }
  if (reason != FinishReason::kNone) {
    if (st.detok && !upd.stopped) sd.text += st.detok->flush();
    finish_seq(req, st, reason);
    sd.finished = true;
    sd.finish_reason = reason_name(reason);
  }
  sd.cumulative_logprob = seq.cumulative_logprob;
}

}  // namespace llmcore
