// Scheduler: one token budget per step, running sequences first, then waiting ones FCFS.
// See scheduler.h for the contract.
#include "engine/scheduler.h"

#include <algorithm>

#include "core/error.h"

namespace llmcore {

Scheduler::Scheduler(const SchedulerConfig& config, BlockManager& block_manager)
    : config_(config), block_manager_(block_manager) {
  LLMCORE_CHECK_ARG(config.max_num_seqs >= 1, "max_num_seqs must be >= 1, got ", config.max_num_seqs);
  LLMCORE_CHECK_ARG(config.max_num_batched_tokens >= 1, "max_num_batched_tokens must be >= 1, got ",
                    config.max_num_batched_tokens);
  LLMCORE_CHECK_ARG(config.max_model_len >= 1, "max_model_len must be >= 1, got ", config.max_model_len);
  // Without chunking a sequence is computed in one step, so a full-length one (a long prompt, or
  // a recompute after preemption) must fit the budget or it would wait forever.
  LLMCORE_CHECK_ARG(config.enable_chunked_prefill || config.max_num_batched_tokens >= config.max_model_len,
                    "max_num_batched_tokens (", config.max_num_batched_tokens,
                    ") must be >= max_model_len (", config.max_model_len,
                    ") when chunked prefill is disabled");
  // A lone sequence of max_model_len tokens must fit the cache, or preempting everyone else
  // would still not let it run.
  const int blocks_per_seq = block_manager.blocks_for_tokens(config.max_model_len);
  LLMCORE_CHECK_ARG(blocks_per_seq <= block_manager.num_blocks(), "max_model_len (", config.max_model_len,
                    ") needs ", blocks_per_seq, " KV blocks of ", block_manager.block_size(),
                    " tokens but the cache has only ", block_manager.num_blocks(), " blocks");
}

void Scheduler::add(Sequence* seq) {
  LLMCORE_CHECK(seq != nullptr, "null sequence");
  LLMCORE_CHECK_ARG(seq->num_tokens() >= 1, "prompt must have >= 1 token, got ", seq->num_tokens());
  LLMCORE_CHECK_ARG(seq->num_tokens() <= config_.max_model_len, "prompt length (", seq->num_tokens(),
                    " tokens) exceeds max_model_len (", config_.max_model_len, ")");
  LLMCORE_CHECK(seq->block_table.empty(), "sequence ", seq->seq_id, " added while holding blocks");
  seq->status = SequenceStatus::kWaiting;
  waiting_.push_back(seq);
}

void Scheduler::add_running(Sequence* seq) {
  LLMCORE_CHECK(seq != nullptr, "null sequence");
  LLMCORE_CHECK(!seq->finished(), "sequence ", seq->seq_id, " is finished");
  // A forked child holds its parent's blocks, so it covers its computed tokens already.
  LLMCORE_CHECK(static_cast<int>(seq->block_table.size()) >=
                    block_manager_.blocks_for_tokens(seq->num_computed_tokens),
                "sequence ", seq->seq_id, " joins running without blocks for its computed tokens");
  seq->status = SequenceStatus::kRunning;
  running_.push_back(seq);
}

SchedulerOutput Scheduler::schedule() {
  SchedulerOutput out;
  int budget = config_.max_num_batched_tokens;

  // Without chunked prefill, prompts run in steps of their own, ahead of the decodes (vLLM's
  // scheduler without chunked prefill, SGLang's default): a step that can admit a waiting
  // sequence computes only admitted prompts; the running sequences decode in the steps between.
  // While sequences run, a prompt is admitted only if the blocks left after it cover one more
  // block for each of them, so the next decode step does not preempt it again at once.
  if (!config_.enable_chunked_prefill) {
    admit_waiting(out, budget, /*keep_decode_room=*/true);
    if (!out.scheduled.empty()) return out;
  }

  // Running sequences, in admission order: a decode token or the next prefill chunk each.
  size_t i = 0;
  while (i < running_.size() && budget > 0) {
    Sequence* seq = running_[i];
    const int num_new = std::min(seq->num_tokens() - seq->num_computed_tokens, budget);
    if (num_new <= 0) {
      ++i;
      continue;
    }
    // Make room by preempting from the back (the most recently admitted); everything before i
    // is already scheduled this step and is never a victim.
    bool allocated = false;
    while (true) {
      if (block_manager_.allocate_slots(*seq, num_new, &out.block_copies)) {
        allocated = true;
        break;
      }
      Sequence* victim = running_.back();
      running_.pop_back();
      preempt(victim);
      out.preempted.push_back(victim);
      if (victim == seq) break;
    }
    if (!allocated) break;  // seq was the last running sequence
    out.scheduled.push_back({seq, num_new, seq->num_computed_tokens + num_new == seq->num_tokens()});
    out.num_batched_tokens += num_new;
    budget -= num_new;
    ++i;
  }

  // Waiting sequences, FCFS, with chunked prefill (without it they were offered the step above).
  // Not in a step that preempted: the cache is short of blocks and the victims (now at the front
  // of waiting) would be re-admitted only to be preempted again.
  if (config_.enable_chunked_prefill && out.preempted.empty()) admit_waiting(out, budget, false);
  return out;
}

void Scheduler::admit_waiting(SchedulerOutput& out, int& budget, bool keep_decode_room) {
  while (!waiting_.empty() && static_cast<int>(running_.size()) < config_.max_num_seqs && budget > 0) {
    Sequence* seq = waiting_.front();
    if (seq->block_table.empty()) seq->num_computed_tokens = block_manager_.lookup_prefix(*seq);
    int num_new = seq->num_tokens() - seq->num_computed_tokens;
    if (num_new > budget) {
      if (!config_.enable_chunked_prefill) break;
      num_new = budget;
    }
    // The prompt's blocks are counted as if none came from the prefix cache (a cached block on
    // the free list is taken from it too), so never fewer than the allocation takes. With no
    // sequence running nothing is kept, so a lone prompt as long as the cache allows still runs.
    const int running = static_cast<int>(running_.size());
    if (keep_decode_room && running > 0 &&
        block_manager_.num_free_blocks() - block_manager_.blocks_for_tokens(seq->num_tokens()) < running)
      break;
    // FCFS: a sequence that does not fit blocks the ones behind it.
    if (!block_manager_.allocate_slots(*seq, num_new, &out.block_copies)) break;
    if (seq->num_cached_tokens < 0) seq->num_cached_tokens = seq->num_computed_tokens;
    waiting_.pop_front();
    seq->status = SequenceStatus::kRunning;
    running_.push_back(seq);
    out.scheduled.push_back({seq, num_new, seq->num_computed_tokens + num_new == seq->num_tokens()});
    out.num_batched_tokens += num_new;
    budget -= num_new;
  }
}

void Scheduler::update(const SchedulerOutput& out) {
  for (const ScheduledSequence& s : out.scheduled) {
    Sequence* seq = s.seq;
    // Aborted while the step ran: its blocks are gone and there is nothing to register.
    if (seq->finished()) continue;
    seq->num_computed_tokens += s.num_tokens;
    LLMCORE_CHECK(seq->num_computed_tokens <= seq->num_tokens(), "sequence ", seq->seq_id, " computed ",
                  seq->num_computed_tokens, " of ", seq->num_tokens(), " tokens");
    block_manager_.cache_full_blocks(*seq);
  }
}

void Scheduler::finish(Sequence* seq) {
  auto run_it = std::find(running_.begin(), running_.end(), seq);
  if (run_it != running_.end()) {
    running_.erase(run_it);
  } else {
    auto wait_it = std::find(waiting_.begin(), waiting_.end(), seq);
    if (wait_it != waiting_.end()) waiting_.erase(wait_it);
  }
  block_manager_.free(*seq);
  seq->status = SequenceStatus::kFinished;
}

void Scheduler::preempt(Sequence* seq) {
  block_manager_.free(*seq);
  seq->num_computed_tokens = 0;
  seq->status = SequenceStatus::kWaiting;
  waiting_.push_front(seq);
  ++num_preemptions_;
}

}  // namespace llmcore
