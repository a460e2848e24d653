// Scheduler: token budget, chunked prefill, seats, FCFS, preemption and recompute, plus a
// randomized engine simulation with an emulated KV cache. Expected schedules are derived by hand
// in the comments; block counts are ceil(tokens / block_size) and the free list hands out its
// front (initially 0..N-1).
#include <gtest/gtest.h>

#include <algorithm>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "engine/scheduler.h"

namespace llmcore {
namespace {

struct Step {
  Sequence* seq;
  int num_tokens;
  bool sample;
  bool operator==(const Step& o) const {
    return seq == o.seq && num_tokens == o.num_tokens && sample == o.sample;
  }
};

std::ostream& operator<<(std::ostream& os, const Step& s) {
  return os << "{seq " << s.seq->seq_id << ", " << s.num_tokens << ", " << (s.sample ? "sample" : "-")
            << "}";
}

// A scheduler with a block manager and the engine's part of a step: run the schedule, advance,
// and append a token (id 1000 + step count) to every sequence whose logits were sampled.
class Harness {
 public:
  Harness(int num_blocks, int block_size, bool prefix_caching, SchedulerConfig config)
      : bm(num_blocks, block_size, prefix_caching), sched(config, bm) {}

  Sequence* add(int num_tokens, int32_t first_token = 0) {
    auto seq = std::make_unique<Sequence>();
    seq->seq_id = static_cast<int64_t>(seqs_.size());
    seq->token_ids.resize(num_tokens);
    std::iota(seq->token_ids.begin(), seq->token_ids.end(), first_token);
    seq->num_prompt_tokens = num_tokens;
    sched.add(seq.get());
    seqs_.push_back(std::move(seq));
    return seqs_.back().get();
  }

  // Schedules, checks that the plan equals `expected`, and completes the step.
  SchedulerOutput step(const std::vector<Step>& expected) {
    SchedulerOutput out = sched.schedule();
    std::vector<Step> got;
    int total = 0;
    for (const ScheduledSequence& s : out.scheduled) {
      got.push_back({s.seq, s.num_tokens, s.sample});
      total += s.num_tokens;
      EXPECT_GE(static_cast<int>(s.seq->block_table.size()),
                bm.blocks_for_tokens(s.seq->num_computed_tokens + s.num_tokens));
    }
    EXPECT_EQ(got, expected) << "step " << num_steps_;
    EXPECT_EQ(out.num_batched_tokens, total);
    sched.update(out);
    for (const ScheduledSequence& s : out.scheduled) {
      if (s.sample && !s.seq->finished()) s.seq->token_ids.push_back(1000 + num_steps_);
    }
    ++num_steps_;
    return out;
  }

  BlockManager bm;
  Scheduler sched;

 private:
  std::vector<std::unique_ptr<Sequence>> seqs_;
  int num_steps_ = 0;
};

SchedulerConfig config(int max_num_seqs, int max_num_batched_tokens, int max_model_len, bool chunked) {
  SchedulerConfig c;
  c.max_num_seqs = max_num_seqs;
  c.max_num_batched_tokens = max_num_batched_tokens;
  c.max_model_len = max_model_len;
  c.enable_chunked_prefill = chunked;
  return c;
}

TEST(Scheduler, RejectsConfigsThatCouldNeverRun) {
  BlockManager bm(8, 4, true);
  EXPECT_THROW(Scheduler(config(0, 16, 32, true), bm), Error);
  EXPECT_THROW(Scheduler(config(4, 0, 32, true), bm), Error);
  // Without chunking a 32-token sequence never fits a 16-token step.
  EXPECT_THROW(Scheduler(config(4, 16, 32, false), bm), Error);
  // 33 tokens need 9 blocks of 4; the cache has 8.
  try {
    Scheduler s(config(4, 16, 33, true), bm);
    FAIL() << "accepted a max_model_len the cache cannot hold";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kValue);
    EXPECT_NE(std::string(e.what()).find("max_model_len"), std::string::npos);
  }
  Scheduler ok(config(4, 16, 32, true), bm);
  Sequence too_long;
  too_long.token_ids.assign(33, 1);
  EXPECT_THROW(ok.add(&too_long), Error);
  Sequence empty;
  EXPECT_THROW(ok.add(&empty), Error);
}

TEST(Scheduler, BudgetIsSplitAcrossSequences) {
  Harness h(64, 4, false, config(8, 10, 64, true));
  std::vector<Sequence*> s;
  for (int i = 0; i < 5; ++i) s.push_back(h.add(4, 100 * i));
  // Budget 10: 4 + 4 + a 2-token chunk of s2.
  h.step({{s[0], 4, true}, {s[1], 4, true}, {s[2], 2, false}});
  EXPECT_EQ(h.sched.num_running(), 3);
  EXPECT_EQ(h.sched.num_waiting(), 2);
  // Decodes 1 + 1, rest of s2 2, s3 whole 4, a 2-token chunk of s4.
  h.step({{s[0], 1, true}, {s[1], 1, true}, {s[2], 2, true}, {s[3], 4, true}, {s[4], 2, false}});
  h.step({{s[0], 1, true}, {s[1], 1, true}, {s[2], 1, true}, {s[3], 1, true}, {s[4], 2, true}});
  EXPECT_EQ(s[4]->num_computed_tokens, 4);
  EXPECT_EQ(s[4]->num_tokens(), 5);
}

TEST(Scheduler, ChunkedPrefillSamplesOnlyOnTheLastChunk) {
  Harness h(64, 4, false, config(8, 8, 64, true));
  Sequence* a = h.add(25);
  std::vector<int> computed_before;
  for (const Step& e : std::vector<Step>{{a, 8, false}, {a, 8, false}, {a, 8, false}, {a, 1, true}, {a, 1, true}}) {
    computed_before.push_back(a->num_computed_tokens);
    h.step({e});
  }
  EXPECT_EQ(computed_before, (std::vector<int>{0, 8, 16, 24, 25}));
  EXPECT_EQ(a->num_tokens(), 27);  // two sampled tokens
  EXPECT_EQ(a->block_table.size(), 7u);  // 26 computed tokens -> 7 blocks
}

TEST(Scheduler, WithoutChunkingAPromptWaitsForTheWholeBudget) {
  Harness h(64, 4, false, config(8, 16, 16, false));
  Sequence* a = h.add(10);
  Sequence* b = h.add(10, 100);
  Sequence* c = h.add(2, 200);
  // b needs 10 > 6 left: stop admitting, and c (which would fit) waits behind it.
  h.step({{a, 10, true}});
  EXPECT_EQ(h.sched.num_waiting(), 2);
  // Prompts first, in a step of their own: a does not decode while b and c are admitted.
  h.step({{b, 10, true}, {c, 2, true}});
  h.step({{a, 1, true}, {b, 1, true}, {c, 1, true}});
}

TEST(Scheduler, WithoutChunkingPromptsRunBetweenDecodeSteps) {
  // 16 blocks of 4 tokens, budget 32, up to 4 sequences.
  Harness h(16, 4, false, config(4, 32, 32, false));
  Sequence* a = h.add(8);
  h.step({{a, 8, true}});  // a: 2 blocks
  h.step({{a, 1, true}});  // a: 3 blocks
  // A prompt arriving between steps takes the next step alone.
  Sequence* b = h.add(12, 100);
  h.step({{b, 12, true}});              // b: 3 blocks
  h.step({{a, 1, true}, {b, 1, true}});  // b: 4 blocks; 9 free
  // c needs 4 blocks and leaves 5 >= 2 running sequences: admitted. d would leave 1 < 3: it
  // waits (FCFS), and the running sequences decode.
  Sequence* c = h.add(16, 200);
  Sequence* d = h.add(16, 300);
  h.step({{c, 16, true}});
  EXPECT_EQ(h.sched.num_waiting(), 1);
  h.step({{a, 1, true}, {b, 1, true}, {c, 1, true}});  // c: 5 blocks; 4 free
  EXPECT_EQ(h.sched.num_waiting(), 1);
  EXPECT_EQ(d->num_computed_tokens, 0);
  // a and b end: 11 free; d takes 4 and leaves 7 >= 1 running.
  h.sched.finish(a);
  h.sched.finish(b);
  h.step({{d, 16, true}});
  h.step({{c, 1, true}, {d, 1, true}});
}

TEST(Scheduler, RespectsMaxNumSeqs) {
  Harness h(64, 4, false, config(2, 100, 64, true));
  Sequence* s0 = h.add(3);
  Sequence* s1 = h.add(3, 10);
  Sequence* s2 = h.add(3, 20);
  h.add(3, 30);
  h.step({{s0, 3, true}, {s1, 3, true}});
  h.step({{s0, 1, true}, {s1, 1, true}});
  h.sched.finish(s0);
  EXPECT_EQ(s0->status, SequenceStatus::kFinished);
  h.step({{s1, 1, true}, {s2, 3, true}});
  EXPECT_EQ(h.sched.num_running(), 2);
  EXPECT_EQ(h.sched.num_waiting(), 1);
}

TEST(Scheduler, FcfsHeadOfLineBlocksSmallerRequests) {
  Harness h(8, 4, false, config(8, 64, 32, true));
  Sequence* a = h.add(19);  // 5 blocks
  h.step({{a, 19, true}});
  Sequence* b = h.add(16, 100);  // needs 4 blocks, 3 free
  Sequence* c = h.add(2, 200);   // needs 1 block: would fit, but is behind b
  h.step({{a, 1, true}});        // a: 20 tokens, still 5 blocks
  EXPECT_EQ(h.sched.num_waiting(), 2);
  EXPECT_EQ(h.bm.num_free_blocks(), 3);
  h.sched.finish(a);
  EXPECT_EQ(h.bm.num_free_blocks(), 8);
  h.step({{b, 16, true}, {c, 2, true}});
}

TEST(Scheduler, PreemptsTheLastAdmittedToTheWaitingFront) {
  Harness h(6, 4, false, config(8, 64, 24, true));
  Sequence* a = h.add(4);        // 1 block
  Sequence* b = h.add(8, 100);   // 2 blocks
  Sequence* c = h.add(12, 200);  // 3 blocks: cache full
  h.step({{a, 4, true}, {b, 8, true}, {c, 12, true}});
  EXPECT_EQ(h.bm.num_free_blocks(), 0);
  Sequence* d = h.add(1, 300);
  // a (5 tokens) needs a 2nd block: c goes (3 freed), a takes 1, b takes 1 for its 3rd.
  SchedulerOutput out = h.step({{a, 1, true}, {b, 1, true}});
  EXPECT_EQ(out.preempted, (std::vector<Sequence*>{c}));
  EXPECT_EQ(h.sched.num_preemptions(), 1);
  EXPECT_EQ(c->status, SequenceStatus::kWaiting);
  EXPECT_EQ(c->num_computed_tokens, 0);
  EXPECT_TRUE(c->block_table.empty());
  EXPECT_EQ(c->num_tokens(), 13);  // its sampled token stays; it is recomputed
  EXPECT_EQ(h.bm.num_free_blocks(), 1);
  EXPECT_EQ(h.sched.num_waiting(), 2);
  // Waiting order is [c, d]: c needs 4 blocks, so d is not admitted either.
  h.step({{a, 1, true}, {b, 1, true}});
  EXPECT_EQ(d->status, SequenceStatus::kWaiting);
  h.sched.finish(a);
  h.sched.finish(b);
  h.step({{c, 13, true}, {d, 1, true}});
}

TEST(Scheduler, PreemptsSeveralAndItselfKeepingAdmissionOrder) {
  Harness h(6, 4, false, config(8, 12, 24, true));
  Sequence* a = h.add(16);
  Sequence* b = h.add(4, 100);
  Sequence* c = h.add(4, 200);
  h.step({{a, 12, false}});                               // a: 3 blocks
  h.step({{a, 4, true}, {b, 4, true}, {c, 4, true}});     // 4 + 1 + 1 = 6 blocks, none free
  Sequence* d = h.add(1, 300);
  // a (17 tokens) needs a 5th block: c is preempted and a takes its block. b (5 tokens) needs a
  // 2nd block, none is free, and b is now the last running sequence: it preempts itself.
  SchedulerOutput out = h.step({{a, 1, true}});
  EXPECT_EQ(out.preempted, (std::vector<Sequence*>{c, b}));
  EXPECT_EQ(h.sched.num_preemptions(), 2);
  EXPECT_EQ(h.sched.num_running(), 1);
  EXPECT_EQ(h.bm.num_free_blocks(), 1);
  // Waiting order is b, c, d (admission order of the victims, then the newcomer): finishing a
  // frees the cache, and the budget of 12 reaches b (5) then c (5) then 2 left for d (1).
  h.sched.finish(a);
  h.step({{b, 5, true}, {c, 5, true}, {d, 1, true}});
}

TEST(Scheduler, NoAdmissionInAStepThatPreempted) {
  Harness h(8, 4, false, config(8, 16, 32, true));
  Sequence* a = h.add(8);
  Sequence* b = h.add(28, 100);
  h.step({{a, 8, true}, {b, 8, false}});  // 2 + 2 blocks, 4 free
  // a takes its 3rd block (3 free). b's 15-token chunk needs 4 more: b preempts itself, freeing
  // 2 (5 free). b's next chunk of 15 (4 blocks) would now fit, but not in this step.
  SchedulerOutput out = h.step({{a, 1, true}});
  EXPECT_EQ(out.preempted, (std::vector<Sequence*>{b}));
  EXPECT_EQ(h.bm.num_free_blocks(), 5);
  h.step({{a, 1, true}, {b, 15, false}});
  EXPECT_EQ(h.bm.num_free_blocks(), 1);
}

TEST(Scheduler, RecomputeAfterPreemptionRestartsTheProgression) {
  Harness h(8, 4, false, config(8, 8, 32, true));
  Sequence* y = h.add(16);
  Sequence* x = h.add(12, 100);
  h.step({{y, 8, false}});
  h.step({{y, 8, true}});
  h.step({{y, 1, true}, {x, 7, false}});  // y: 5 blocks; x: 2 blocks; 1 free
  h.step({{y, 1, true}, {x, 5, true}});   // x: 3 blocks; none free
  // x (13 tokens) needs a 4th block; it is the last admitted, so it preempts itself.
  SchedulerOutput out = h.step({{y, 1, true}});
  EXPECT_EQ(out.preempted, (std::vector<Sequence*>{x}));
  EXPECT_EQ(x->num_tokens(), 13);
  EXPECT_EQ(x->num_prompt_tokens, 12);
  const std::vector<int32_t> tokens_at_preemption = x->token_ids;
  h.sched.finish(y);
  h.step({{x, 8, false}});
  h.step({{x, 5, true}});
  EXPECT_EQ(x->num_computed_tokens, 13);
  EXPECT_EQ(x->num_tokens(), 14);
  EXPECT_TRUE(std::equal(tokens_at_preemption.begin(), tokens_at_preemption.end(), x->token_ids.begin()));

  // A fresh request with the same 13 tokens follows the same progression.
  Harness fresh(8, 4, false, config(8, 8, 32, true));
  Sequence* z = fresh.add(13);
  fresh.step({{z, 8, false}});
  fresh.step({{z, 5, true}});
}

TEST(Scheduler, PrefixCacheHitsOnAdmissionAndAfterPreemption) {
  Harness h(8, 4, true, config(8, 64, 32, true));
  Sequence* y = h.add(16);
  Sequence* x = h.add(12, 100);
  h.step({{y, 16, true}, {x, 12, true}});  // blocks 0-3 and 4-6 all full and cached; 7 free
  EXPECT_EQ(x->num_cached_tokens, 0);
  // y takes block 7; x needs a 4th block for token 12 and preempts itself. Its blocks return to
  // the free list with their hashes.
  SchedulerOutput out = h.step({{y, 1, true}});
  EXPECT_EQ(out.preempted, (std::vector<Sequence*>{x}));
  EXPECT_EQ(h.bm.num_free_blocks(), 3);
  // x hits its 3 blocks (12 tokens) but needs 1 fresh block besides them: none.
  h.step({{y, 1, true}});
  EXPECT_EQ(x->status, SequenceStatus::kWaiting);
  h.sched.finish(y);
  // Only the 13th token is recomputed; the first admission's count is kept.
  h.step({{x, 1, true}});
  EXPECT_EQ(x->num_cached_tokens, 0);
  // Lookups: y 16 (0 hit), x 12 (0), x 13 (12) twice.
  EXPECT_EQ(h.bm.prefix_cache_queries(), 16 + 12 + 13 + 13);
  EXPECT_EQ(h.bm.prefix_cache_hits(), 12 + 12);

  // A new request with y's 16 prompt tokens hits 3 blocks (16 - 1 leaves the last block out)
  // and records the hit as its cached tokens.
  Sequence* w = h.add(16);
  h.step({{x, 1, true}, {w, 4, true}});
  EXPECT_EQ(w->num_cached_tokens, 12);
}

TEST(Scheduler, FinishFreesEverythingWherever) {
  Harness h(16, 4, true, config(2, 8, 64, true));
  Sequence* a = h.add(6);
  Sequence* b = h.add(6, 100);
  Sequence* c = h.add(6, 200);
  h.step({{a, 6, true}, {b, 2, false}});
  // An abort while the step runs: update must not advance or register b.
  SchedulerOutput out = h.sched.schedule();
  h.sched.finish(b);
  h.sched.update(out);
  EXPECT_EQ(b->status, SequenceStatus::kFinished);
  EXPECT_TRUE(b->block_table.empty());
  EXPECT_EQ(b->num_computed_tokens, 2);
  h.sched.finish(c);  // still waiting
  EXPECT_EQ(c->status, SequenceStatus::kFinished);
  h.sched.finish(a);
  EXPECT_FALSE(h.sched.has_unfinished());
  EXPECT_EQ(h.bm.num_free_blocks(), 16);
  for (int id = 0; id < 16; ++id) EXPECT_EQ(h.bm.ref_count(id), 0);
}

TEST(Scheduler, ForkedChildJoinsRunningAndCopiesOnWrite) {
  Harness h(16, 4, false, config(8, 64, 64, true));
  Sequence* p = h.add(6);
  h.step({{p, 6, true}});  // p: 7 tokens, 6 computed, blocks 0 1
  Sequence child;
  child.seq_id = 99;
  child.token_ids = p->token_ids;
  child.token_ids.back() = 777;  // its own sampled token
  child.num_prompt_tokens = p->num_prompt_tokens;
  child.num_computed_tokens = p->num_computed_tokens;
  h.bm.fork(*p, child);
  h.sched.add_running(&child);
  EXPECT_EQ(h.sched.num_running(), 2);
  // p writes token 6 into shared block 1 and gets block 2, a copy; the child then owns block 1.
  SchedulerOutput out = h.step({{p, 1, true}, {&child, 1, true}});
  ASSERT_EQ(out.block_copies.size(), 1u);
  EXPECT_EQ(out.block_copies[0].src, 1);
  EXPECT_EQ(out.block_copies[0].dst, 2);
  EXPECT_EQ(p->block_table, (std::vector<int>{0, 2}));
  EXPECT_EQ(child.block_table, (std::vector<int>{0, 1}));
  EXPECT_EQ(h.bm.ref_count(0), 2);
  h.sched.finish(&child);
  h.sched.finish(p);
  EXPECT_EQ(h.bm.num_free_blocks(), 16);
}

// Randomized engine simulation on tiny caches. Every step checks the block bookkeeping against
// the live sequences, applies copies and writes to an emulated KV cache (each slot holds a digest
// of the token prefix that produced it), and checks that every running sequence reads back its
// own prefixes. Arrivals stop after a while; everything must then drain and free all blocks.
struct SimConfig {
  int num_blocks, block_size, max_num_seqs, budget, max_model_len;
  bool chunked, caching;
};

class Simulation {
 public:
  Simulation(const SimConfig& c, uint32_t seed)
      : c_(c),
        bm_(c.num_blocks, c.block_size, c.caching),
        sched_(config(c.max_num_seqs, c.budget, c.max_model_len, c.chunked), bm_),
        rng_(seed),
        kv_(c.num_blocks, std::vector<uint64_t>(c.block_size, 0)) {}

  void run(int num_arrival_steps, int max_steps) {
    int step = 0;
    for (; step < max_steps; ++step) {
      if (step >= num_arrival_steps && !sched_.has_unfinished()) break;
      if (step < num_arrival_steps && rng_() % 3 == 0) arrive();
      one_step();
      if (::testing::Test::HasFatalFailure()) return;
    }
    ASSERT_LT(step, max_steps) << "the scheduler did not drain";
    for (int b = 0; b < c_.num_blocks; ++b) ASSERT_EQ(bm_.ref_count(b), 0);
    ASSERT_EQ(bm_.num_free_blocks(), c_.num_blocks);
    // The free list holds each block once: a probe gets all of them, distinct.
    Sequence probe;
    probe.token_ids.assign(c_.num_blocks * c_.block_size, 1);
    probe.use_prefix_cache = false;
    ASSERT_TRUE(bm_.allocate_slots(probe, probe.num_tokens(), nullptr));
    EXPECT_EQ(std::set<int>(probe.block_table.begin(), probe.block_table.end()).size(),
              static_cast<size_t>(c_.num_blocks));
    bm_.free(probe);
  }

  int64_t num_preemptions() const { return sched_.num_preemptions(); }
  int num_copies = 0, num_chunks = 0, num_forks = 0, num_aborts = 0, num_finished = 0;
  int64_t num_hit_tokens() const { return bm_.prefix_cache_hits(); }

 private:
  static uint64_t digest(const Sequence& s, int pos) {  // FNV-1a over tokens [0, pos]
    uint64_t h = 1469598103934665603ULL;
    for (int i = 0; i <= pos; ++i) h = (h ^ static_cast<uint32_t>(s.token_ids[i])) * 1099511628211ULL;
    return h;
  }

  void arrive() {
    auto s = std::make_unique<Sequence>();
    s->seq_id = next_id_++;
    // Prompts share stems so that prefix hits happen.
    const int stem = rng_() % 3;
    const int stem_len = rng_() % (c_.max_model_len / 2);
    for (int i = 0; i < stem_len; ++i) s->token_ids.push_back(stem * 100 + i % 7);
    for (int i = 0, n = 1 + rng_() % 4; i < n; ++i) s->token_ids.push_back(rng_() % 50);
    s->num_prompt_tokens = s->num_tokens();
    s->use_prefix_cache = rng_() % 6 != 0;
    max_output_[s.get()] = 1 + rng_() % 10;
    sched_.add(s.get());
    live_.insert(s.get());
    owned_.push_back(std::move(s));
  }

  void check_books(const char* where) {
    std::map<int, int> uses;
    for (Sequence* s : live_) {
      ASSERT_FALSE(s->finished());
      if (s->status == SequenceStatus::kWaiting) {
        ASSERT_TRUE(s->block_table.empty()) << where;
        continue;
      }
      ASSERT_GE(static_cast<int>(s->block_table.size()), bm_.blocks_for_tokens(s->num_computed_tokens)) << where;
      ASSERT_EQ(std::set<int>(s->block_table.begin(), s->block_table.end()).size(), s->block_table.size())
          << where << ": a block twice in one table";
      for (int b : s->block_table) ++uses[b];
    }
    int sum_refs = 0, sum_table = 0, num_unused = 0;
    for (int b = 0; b < c_.num_blocks; ++b) {
      const int n = uses.count(b) ? uses[b] : 0;
      ASSERT_EQ(bm_.ref_count(b), n) << where << ": block " << b;
      sum_refs += bm_.ref_count(b);
      sum_table += n;
      if (n == 0) ++num_unused;
    }
    ASSERT_EQ(sum_refs, sum_table);
    ASSERT_EQ(bm_.num_free_blocks(), num_unused) << where;
    ASSERT_EQ(bm_.num_free_blocks() + (c_.num_blocks - num_unused), c_.num_blocks);
    int num_running = 0;
    for (Sequence* s : live_) num_running += s->status == SequenceStatus::kRunning;
    ASSERT_EQ(num_running, sched_.num_running());
    ASSERT_EQ(static_cast<int>(live_.size()) - num_running, sched_.num_waiting());
  }

  void one_step() {
    std::map<Sequence*, int> was_computed;
    std::map<Sequence*, bool> was_waiting;
    for (Sequence* s : live_) {
      was_computed[s] = s->num_computed_tokens;
      was_waiting[s] = s->status == SequenceStatus::kWaiting;
    }
    SchedulerOutput out = sched_.schedule();
    check_books("after schedule");
    if (::testing::Test::HasFatalFailure()) return;

    ASSERT_LE(out.num_batched_tokens, c_.budget);
    ASSERT_LE(sched_.num_running(), c_.max_num_seqs);
    if (sched_.num_waiting() > 0 && out.preempted.empty() && out.num_batched_tokens == 0) {
      // Nothing ran although work waits: only possible while running sequences hold blocks.
      ASSERT_GT(sched_.num_running(), 0);
    }
    for (Sequence* p : out.preempted) {
      ASSERT_EQ(p->status, SequenceStatus::kWaiting);
      ASSERT_EQ(p->num_computed_tokens, 0);
      ASSERT_TRUE(p->block_table.empty());
    }
    int total = 0;
    std::set<Sequence*> seen;
    for (const ScheduledSequence& s : out.scheduled) {
      ASSERT_TRUE(seen.insert(s.seq).second) << "scheduled twice";
      ASSERT_EQ(s.seq->status, SequenceStatus::kRunning);
      ASSERT_GE(s.num_tokens, 1);
      ASSERT_LE(s.seq->num_computed_tokens + s.num_tokens, s.seq->num_tokens());
      ASSERT_EQ(s.sample, s.seq->num_computed_tokens + s.num_tokens == s.seq->num_tokens());
      if (was_waiting[s.seq]) {
        ASSERT_TRUE(out.preempted.empty()) << "admission in a step that preempted";
        if (!c_.chunked) {
          ASSERT_TRUE(s.sample) << "a prompt was split with chunking off";
        }
      } else if (!c_.chunked) {
        // Without chunking, a step that admits prompts runs nothing else.
        for (const ScheduledSequence& o : out.scheduled)
          ASSERT_FALSE(was_waiting[o.seq]) << "a decode in a step that admitted a prompt";
      } else {
        ASSERT_EQ(s.seq->num_computed_tokens, was_computed[s.seq]);
      }
      if (!s.sample) ++num_chunks;
      total += s.num_tokens;
    }
    ASSERT_EQ(total, out.num_batched_tokens);

    // The executor: copies first, in order, then the forward pass writes each new position.
    for (const BlockCopy& cp : out.block_copies) {
      ASSERT_NE(bm_.ref_count(cp.dst), 0);
      kv_[cp.dst] = kv_[cp.src];
      ++num_copies;
    }
    for (const ScheduledSequence& s : out.scheduled) {
      for (int p = s.seq->num_computed_tokens; p < s.seq->num_computed_tokens + s.num_tokens; ++p) {
        const int b = s.seq->block_table[p / c_.block_size];
        ASSERT_EQ(bm_.ref_count(b), 1) << "write into shared block " << b;
        kv_[b][p % c_.block_size] = digest(*s.seq, p);
      }
    }
    // Sometimes a request is aborted while its step runs.
    if (!out.scheduled.empty() && rng_() % 40 == 0) {
      finish(out.scheduled[rng_() % out.scheduled.size()].seq);
      ++num_aborts;
    }
    sched_.update(out);
    for (Sequence* s : live_) {
      if (s->status != SequenceStatus::kRunning) continue;
      for (int p = 0; p < s->num_computed_tokens; ++p) {
        ASSERT_EQ(kv_[s->block_table[p / c_.block_size]][p % c_.block_size], digest(*s, p))
            << "seq " << s->seq_id << " pos " << p;
      }
    }

    // Sampling: stop at the output limit or max_model_len, maybe fork, else append a token.
    for (const ScheduledSequence& s : out.scheduled) {
      Sequence* seq = s.seq;
      if (!s.sample || seq->finished()) continue;
      ASSERT_EQ(seq->num_computed_tokens, seq->num_tokens());
      if (seq->num_output_tokens() >= max_output_[seq] || seq->num_tokens() >= c_.max_model_len) {
        finish(seq);
        ++num_finished;
        continue;
      }
      if (rng_() % 8 == 0 && sched_.num_running() < c_.max_num_seqs && live_.size() < 12) {
        auto child = std::make_unique<Sequence>();
        child->seq_id = next_id_++;
        child->token_ids = seq->token_ids;
        child->num_prompt_tokens = seq->num_prompt_tokens;
        child->num_computed_tokens = seq->num_computed_tokens;
        child->use_prefix_cache = seq->use_prefix_cache;
        bm_.fork(*seq, *child);
        sched_.add_running(child.get());
        max_output_[child.get()] = max_output_[seq];
        child->token_ids.push_back(rng_() % 50);
        live_.insert(child.get());
        owned_.push_back(std::move(child));
        ++num_forks;
      }
      seq->token_ids.push_back(rng_() % 50);
    }
    // Sometimes a request is aborted between steps, running or waiting.
    if (!live_.empty() && rng_() % 25 == 0) {
      auto it = live_.begin();
      std::advance(it, rng_() % live_.size());
      finish(*it);
      ++num_aborts;
    }
    check_books("after update");
  }

  void finish(Sequence* s) {
    sched_.finish(s);
    ASSERT_TRUE(s->block_table.empty());
    live_.erase(s);
  }

  SimConfig c_;
  BlockManager bm_;
  Scheduler sched_;
  std::mt19937 rng_;
  std::vector<std::vector<uint64_t>> kv_;  // [num_blocks][block_size] prefix digests
  std::vector<std::unique_ptr<Sequence>> owned_;
  std::set<Sequence*> live_;
  std::map<Sequence*, int> max_output_;
  int64_t next_id_ = 0;
};

TEST(Scheduler, RandomizedSimulationKeepsInvariants) {
  const std::vector<SimConfig> configs = {
      {10, 4, 4, 12, 32, true, true},
      {6, 2, 3, 12, 12, false, true},
      {16, 4, 6, 7, 48, true, false},
      {9, 3, 5, 5, 27, true, true},
      {12, 1, 4, 12, 12, false, false},
  };
  int64_t preemptions = 0, hits = 0;
  int copies = 0, chunks = 0, forks = 0, aborts = 0, finished = 0;
  for (size_t i = 0; i < configs.size(); ++i) {
    for (uint32_t seed : {11u, 22u, 33u}) {
      SCOPED_TRACE("config " + std::to_string(i) + " seed " + std::to_string(seed));
      Simulation sim(configs[i], seed);
      sim.run(/*num_arrival_steps=*/2500, /*max_steps=*/20000);
      if (HasFatalFailure()) return;
      preemptions += sim.num_preemptions();
      hits += sim.num_hit_tokens();
      copies += sim.num_copies;
      chunks += sim.num_chunks;
      forks += sim.num_forks;
      aborts += sim.num_aborts;
      finished += sim.num_finished;
    }
  }
  // The simulation must actually reach the interesting paths.
  EXPECT_GT(preemptions, 100);
  EXPECT_GT(hits, 100);
  EXPECT_GT(copies, 50);
  EXPECT_GT(chunks, 100);
  EXPECT_GT(forks, 50);
  EXPECT_GT(aborts, 50);
  EXPECT_GT(finished, 500);
  std::cout << "simulation: " << preemptions << " preemptions, " << hits << " hit tokens, " << copies
            << " copies, " << chunks << " chunks, " << forks << " forks, " << aborts << " aborts, "
            << finished << " finished\n";
}

}  // namespace
}  // namespace llmcore
