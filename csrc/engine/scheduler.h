// Scheduler: the phase-free token-budget scheduler. Each step it hands out up to
// max_num_batched_tokens tokens: first to running sequences (decode tokens, or the next chunk of
// a prefill), then to waiting ones in FCFS order. A sequence is "a request for
// num_tokens() - num_computed_tokens more tokens of compute"; prefill, chunked prefill, decode
// and recompute after preemption differ only in those counts. It never sees device memory.
#pragma once

#include <deque>
#include <vector>

#include "engine/block_manager.h"
#include "engine/sequence.h"

namespace llmcore {

struct SchedulerConfig {
  int max_num_seqs = 256;             // running sequences at most
  int max_num_batched_tokens = 8192;  // tokens computed per step at most
  int max_model_len = 2048;
  // false: prompts are computed whole, in steps of their own before the decodes (schedule()); a
  // prompt that does not fit the step's budget waits.
  bool enable_chunked_prefill = true;
};

struct ScheduledSequence {
  Sequence* seq = nullptr;
  int num_tokens = 0;   // tokens computed this step, from position seq->num_computed_tokens
  // The step reaches seq->num_tokens(): the last row's logits are sampled for the next token.
  bool sample = false;
};

// The only message from the scheduler to the executor.
struct SchedulerOutput {
  std::vector<ScheduledSequence> scheduled;  // running order
  int num_batched_tokens = 0;
  // Copy-on-write, done before the forward pass and in this order: a block freed by a preemption
  // can be a later copy's destination after being an earlier copy's source.
  std::vector<BlockCopy> block_copies;
  std::vector<Sequence*> preempted;          // sent back to waiting this step (blocks freed)
  bool empty() const { return scheduled.empty(); }
};

class Scheduler {
 public:
  Scheduler(const SchedulerConfig& config, BlockManager& block_manager);

  // New sequence at the back of the waiting queue.
  void add(Sequence* seq);
  // A sequence forked during the step (n > 1): joins the running set right away.
  void add_running(Sequence* seq);

  // Plans one step. Running sequences first, in order; when a running sequence cannot get a
  // block, the most recently admitted running sequence is preempted (blocks freed,
  // num_computed_tokens = 0, back to the front of the waiting queue) until it fits or it is
  // itself preempted. Waiting sequences are admitted FCFS while seats, budget and blocks last
  // (prefix-cache hits set num_computed_tokens first); none are admitted in a step that preempted.
  // Without chunked prefill, waiting sequences are offered the step first, and a step that admits
  // any computes only them (whole prompts); the running sequences decode in the other steps.
  SchedulerOutput schedule();

  // After the executor ran `out`: advances num_computed_tokens by each scheduled count and
  // registers newly full blocks with the block manager.
  void update(const SchedulerOutput& out);

  // Removes a sequence (finished or aborted) from wherever it is and frees its blocks; sets
  // status to kFinished. The caller sets finish_reason.
  void finish(Sequence* seq);

  int num_running() const { return static_cast<int>(running_.size()); }
  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  bool has_unfinished() const { return !running_.empty() || !waiting_.empty(); }
  int64_t num_preemptions() const { return num_preemptions_; }

 private:
  void preempt(Sequence* seq);
  // Admits waiting sequences FCFS into `out` while seats, `budget` and blocks last; with
  // keep_decode_room, only while one free block per running sequence is left after each.
  void admit_waiting(SchedulerOutput& out, int& budget, bool keep_decode_room);

  SchedulerConfig config_;
  BlockManager& block_manager_;
  std::deque<Sequence*> waiting_;
  std::vector<Sequence*> running_;  // admission order
  int64_t num_preemptions_ = 0;
};

}  // namespace llmcore
