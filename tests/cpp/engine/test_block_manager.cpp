// BlockManager: free-list order, reference counts, prefix caching by hash chain, copy-on-write
// and all-or-nothing allocation. Expected block ids are derived by hand from the documented
// policy: the free list starts as 0..N-1, hands out its front, and takes freed blocks at its
// back, a sequence's tail block first.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "core/error.h"
#include "engine/block_manager.h"

namespace llmcore {
namespace {

Sequence make_seq(int64_t id, std::vector<int32_t> tokens) {
  Sequence seq;
  seq.seq_id = id;
  seq.token_ids = std::move(tokens);
  seq.num_prompt_tokens = seq.num_tokens();
  return seq;
}

std::vector<int32_t> iota_tokens(int n, int32_t first) {
  std::vector<int32_t> t(n);
  std::iota(t.begin(), t.end(), first);
  return t;
}

// Allocates and "computes" the whole sequence the way the scheduler does for a first admission:
// lookup, allocate, advance, register.
void prefill(BlockManager& bm, Sequence& seq) {
  seq.num_computed_tokens = bm.lookup_prefix(seq);
  ASSERT_TRUE(bm.allocate_slots(seq, seq.num_tokens() - seq.num_computed_tokens, nullptr));
  seq.num_computed_tokens = seq.num_tokens();
  bm.cache_full_blocks(seq);
}

// Takes every free block into one probe sequence (prefix caching off for it) and returns them in
// hand-out order; frees the probe again. Evicts cached hashes, so only for the end of a test.
std::vector<int> drain_free_list(BlockManager& bm) {
  Sequence probe = make_seq(999, std::vector<int32_t>(bm.num_free_blocks() * bm.block_size(), 7));
  probe.use_prefix_cache = false;
  EXPECT_TRUE(bm.allocate_slots(probe, probe.num_tokens(), nullptr));
  std::vector<int> ids = probe.block_table;
  bm.free(probe);
  return ids;
}

void expect_all_free(BlockManager& bm) {
  EXPECT_EQ(bm.num_free_blocks(), bm.num_blocks());
  for (int b = 0; b < bm.num_blocks(); ++b) EXPECT_EQ(bm.ref_count(b), 0) << "block " << b;
  std::vector<int> ids = drain_free_list(bm);
  std::sort(ids.begin(), ids.end());
  std::vector<int> all(bm.num_blocks());
  std::iota(all.begin(), all.end(), 0);
  EXPECT_EQ(ids, all);  // each block exactly once in the free list
}

TEST(BlockManager, RejectsBadConfig) {
  try {
    BlockManager bm(0, 16, true);
    FAIL() << "num_blocks = 0 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kValue);
    EXPECT_NE(std::string(e.what()).find("num_blocks"), std::string::npos);
  }
  EXPECT_THROW(BlockManager(4, 0, true), Error);
}

TEST(BlockManager, AllocateCoversTokensAndUsage) {
  BlockManager bm(8, 4, false);
  EXPECT_EQ(bm.num_free_blocks(), 8);
  EXPECT_DOUBLE_EQ(bm.usage(), 0.0);
  Sequence a = make_seq(1, iota_tokens(10, 0));
  ASSERT_TRUE(bm.allocate_slots(a, 10, nullptr));
  EXPECT_EQ(a.block_table, (std::vector<int>{0, 1, 2}));  // ceil(10 / 4) = 3
  EXPECT_EQ(bm.num_free_blocks(), 5);
  EXPECT_DOUBLE_EQ(bm.usage(), 3.0 / 8.0);
  a.num_computed_tokens = 10;
  a.token_ids.push_back(10);
  ASSERT_TRUE(bm.allocate_slots(a, 1, nullptr));  // 11 tokens still fit 3 blocks
  EXPECT_EQ(a.block_table.size(), 3u);
  a.num_computed_tokens = 11;
  a.token_ids.push_back(11);
  a.token_ids.push_back(12);
  ASSERT_TRUE(bm.allocate_slots(a, 2, nullptr));  // 13 tokens: a 4th block
  EXPECT_EQ(a.block_table, (std::vector<int>{0, 1, 2, 3}));
  for (int b : a.block_table) EXPECT_EQ(bm.ref_count(b), 1);
  bm.free(a);
  EXPECT_TRUE(a.block_table.empty());
  expect_all_free(bm);
}

TEST(BlockManager, FreeListIsLruWithTailFirst) {
  BlockManager bm(8, 4, false);
  Sequence a = make_seq(1, iota_tokens(8, 0));    // blocks 0, 1
  Sequence b = make_seq(2, iota_tokens(8, 100));  // blocks 2, 3
  Sequence c = make_seq(3, iota_tokens(4, 200));  // block 4
  ASSERT_TRUE(bm.allocate_slots(a, 8, nullptr));
  ASSERT_TRUE(bm.allocate_slots(b, 8, nullptr));
  ASSERT_TRUE(bm.allocate_slots(c, 4, nullptr));
  EXPECT_EQ(a.block_table, (std::vector<int>{0, 1}));
  EXPECT_EQ(b.block_table, (std::vector<int>{2, 3}));
  EXPECT_EQ(c.block_table, (std::vector<int>{4}));
  bm.free(b);  // free list: 5 6 7 3 2
  bm.free(a);  // free list: 5 6 7 3 2 1 0
  Sequence d = make_seq(4, iota_tokens(20, 300));  // 5 blocks
  ASSERT_TRUE(bm.allocate_slots(d, 20, nullptr));
  EXPECT_EQ(d.block_table, (std::vector<int>{5, 6, 7, 3, 2}));
  bm.free(c);  // free list: 1 0 4
  bm.free(d);  // free list: 1 0 4 2 3 7 6 5
  EXPECT_EQ(drain_free_list(bm), (std::vector<int>{1, 0, 4, 2, 3, 7, 6, 5}));
  expect_all_free(bm);
}

TEST(BlockManager, PrefixHitsFollowTheHashChain) {
  BlockManager bm(16, 4, true);
  Sequence a = make_seq(1, iota_tokens(10, 0));  // full blocks [0..3] [4..7], partial [8 9]
  prefill(bm, a);
  EXPECT_EQ(a.block_hashes.size(), 2u);
  EXPECT_EQ(bm.prefix_cache_queries(), 10);
  EXPECT_EQ(bm.prefix_cache_hits(), 0);

  Sequence same = make_seq(2, iota_tokens(10, 0));
  EXPECT_EQ(bm.lookup_prefix(same), 8);

  std::vector<int32_t> t = iota_tokens(10, 0);
  t[8] = 99;  // differs only in the partial block
  Sequence diff_tail = make_seq(3, t);
  EXPECT_EQ(bm.lookup_prefix(diff_tail), 8);

  t = iota_tokens(10, 0);
  t[5] = 99;  // second block differs
  Sequence diff_second = make_seq(4, t);
  EXPECT_EQ(bm.lookup_prefix(diff_second), 4);

  t = iota_tokens(10, 0);
  t[0] = 99;  // first block differs; the second block's tokens match a's but its parent does not
  Sequence diff_first = make_seq(5, t);
  EXPECT_EQ(bm.lookup_prefix(diff_first), 0);

  // A block of a's tokens 4..7 placed first: same contents, different position in the chain.
  Sequence shifted = make_seq(6, {4, 5, 6, 7, 4, 5, 6, 7, 1});
  EXPECT_EQ(bm.lookup_prefix(shifted), 0);

  EXPECT_EQ(bm.prefix_cache_queries(), 10 + 10 + 10 + 10 + 10 + 9);
  EXPECT_EQ(bm.prefix_cache_hits(), 8 + 8 + 4);

  // Attaching the hit shares a's first two blocks and adds one fresh block for tokens 8, 9.
  same.num_computed_tokens = bm.lookup_prefix(same);
  ASSERT_TRUE(bm.allocate_slots(same, 2, nullptr));
  ASSERT_EQ(same.block_table.size(), 3u);
  EXPECT_EQ(same.block_table[0], a.block_table[0]);
  EXPECT_EQ(same.block_table[1], a.block_table[1]);
  EXPECT_NE(same.block_table[2], a.block_table[2]);
  EXPECT_EQ(bm.ref_count(a.block_table[0]), 2);
  EXPECT_EQ(bm.ref_count(a.block_table[1]), 2);
  EXPECT_EQ(bm.ref_count(a.block_table[2]), 1);
  EXPECT_EQ(bm.num_free_blocks(), 16 - 4);
  bm.free(a);
  bm.free(same);
  expect_all_free(bm);
}

// With separate_generated_blocks, blocks holding generated tokens hash with the prompt's end
// (block_manager.h): the GPU then computes generated-token rows with another kernel, so they must
// not serve another request's prompt.
TEST(BlockManager, GeneratedBlocksOnlyHitSequencesWithTheSamePromptEnd) {
  BlockManager bm(16, 4, true, /*separate_generated_blocks=*/true);
  Sequence a = make_seq(1, iota_tokens(6, 0));  // prompt 0..5
  for (int32_t t : {6, 7, 8, 9, 10, 11}) a.token_ids.push_back(t);  // generated 6..11
  prefill(bm, a);  // blocks [0..3] prompt, [4..7] prompt 4, 5 + generated 6, 7, [8..11] generated
  ASSERT_EQ(a.block_hashes.size(), 3u);

  // The same 13 tokens as a prompt: only the block wholly inside both prompts hits.
  Sequence chat = make_seq(2, iota_tokens(13, 0));
  EXPECT_EQ(bm.lookup_prefix(chat), 4);

  // The same tokens with the same prompt end (a's recompute after preemption, or a fork): all
  // three blocks hit.
  Sequence again = make_seq(3, iota_tokens(6, 0));
  for (int32_t t : {6, 7, 8, 9, 10, 11, 12}) again.token_ids.push_back(t);
  EXPECT_EQ(bm.lookup_prefix(again), 12);

  // Another prompt end inside the same block: the mixed block differs, and so its children.
  Sequence other_end = make_seq(4, iota_tokens(7, 0));
  for (int32_t t : {7, 8, 9, 10, 11, 12}) other_end.token_ids.push_back(t);
  EXPECT_EQ(bm.lookup_prefix(other_end), 4);
  bm.free(a);
  expect_all_free(bm);

  // Without the separation (one GEMM kernel for every row) the chat prompt hits all three.
  BlockManager one_kernel(16, 4, true);
  Sequence b = a;
  b.block_table.clear();
  b.block_hashes.clear();
  prefill(one_kernel, b);
  Sequence chat2 = make_seq(5, iota_tokens(13, 0));
  EXPECT_EQ(one_kernel.lookup_prefix(chat2), 12);
  one_kernel.free(b);
}

TEST(BlockManager, HitLeavesTheLastTokenUncached) {
  BlockManager bm(16, 4, true);
  Sequence a = make_seq(1, iota_tokens(8, 0));  // exactly two full blocks
  prefill(bm, a);
  Sequence b = make_seq(2, iota_tokens(8, 0));
  EXPECT_EQ(bm.lookup_prefix(b), 4);  // (8 - 1) / 4 = 1 block: token 7 must be computed
  Sequence c = make_seq(3, iota_tokens(9, 0));
  EXPECT_EQ(bm.lookup_prefix(c), 8);
  Sequence one = make_seq(4, {0});
  EXPECT_EQ(bm.lookup_prefix(one), 0);
  bm.free(a);
  expect_all_free(bm);
}

TEST(BlockManager, FreedBlocksKeepTheirHashUntilReused) {
  BlockManager bm(8, 4, true);
  Sequence a = make_seq(1, iota_tokens(10, 0));  // blocks 0 1 2; 0 and 1 full and cached
  prefill(bm, a);
  EXPECT_EQ(a.block_table, (std::vector<int>{0, 1, 2}));
  bm.free(a);  // free list: 3 4 5 6 7 2 1 0

  // Revival: a hit takes blocks out of the free list without any copy.
  Sequence b = make_seq(2, iota_tokens(10, 0));
  prefill(bm, b);
  EXPECT_EQ(b.num_cached_tokens, -1);  // the block manager does not touch it
  EXPECT_EQ(b.block_table, (std::vector<int>{0, 1, 3}));
  EXPECT_EQ(bm.num_free_blocks(), 5);
  bm.free(b);  // free list: 4 5 6 7 2 3 1 0

  // Filler takes 6 blocks: 4 5 6 7 2 3. Blocks 1 and 0 still hold a's hashes.
  Sequence filler = make_seq(3, iota_tokens(24, 500));
  filler.use_prefix_cache = false;
  ASSERT_TRUE(bm.allocate_slots(filler, 24, nullptr));
  EXPECT_EQ(filler.block_table, (std::vector<int>{4, 5, 6, 7, 2, 3}));
  Sequence probe = make_seq(4, iota_tokens(10, 0));
  EXPECT_EQ(bm.lookup_prefix(probe), 8);

  // One more block hands out block 1: the hash of a's second block is evicted.
  Sequence one_more = make_seq(5, {42});
  one_more.use_prefix_cache = false;
  ASSERT_TRUE(bm.allocate_slots(one_more, 1, nullptr));
  EXPECT_EQ(one_more.block_table, (std::vector<int>{1}));
  EXPECT_EQ(bm.lookup_prefix(probe), 4);
  bm.free(one_more);
  bm.free(filler);
  expect_all_free(bm);
}

TEST(BlockManager, NoCachingWhenDisabled) {
  BlockManager off(8, 4, false);
  Sequence a = make_seq(1, iota_tokens(10, 0));
  prefill(off, a);
  Sequence b = make_seq(2, iota_tokens(10, 0));
  EXPECT_EQ(off.lookup_prefix(b), 0);
  EXPECT_EQ(off.prefix_cache_queries(), 0);
  EXPECT_EQ(off.prefix_cache_hits(), 0);
  off.free(a);
  expect_all_free(off);

  // A sequence that opts out neither registers nor hits.
  BlockManager on(8, 4, true);
  Sequence c = make_seq(3, iota_tokens(10, 0));
  c.use_prefix_cache = false;
  prefill(on, c);
  Sequence d = make_seq(4, iota_tokens(10, 0));
  EXPECT_EQ(on.lookup_prefix(d), 0);
  Sequence e = make_seq(5, iota_tokens(10, 0));
  prefill(on, e);
  Sequence f = make_seq(6, iota_tokens(10, 0));
  f.use_prefix_cache = false;
  EXPECT_EQ(on.lookup_prefix(f), 0);
  Sequence g = make_seq(7, iota_tokens(10, 0));
  EXPECT_EQ(on.lookup_prefix(g), 8);
  on.free(c);
  on.free(e);
  expect_all_free(on);
}

TEST(BlockManager, CopyOnWriteAfterFork) {
  BlockManager bm(8, 4, false);
  Sequence parent = make_seq(1, iota_tokens(6, 0));  // blocks 0 [0..3], 1 [4 5 _ _]
  ASSERT_TRUE(bm.allocate_slots(parent, 6, nullptr));
  parent.num_computed_tokens = 6;
  Sequence child = make_seq(2, parent.token_ids);
  child.num_computed_tokens = 6;
  bm.fork(parent, child);
  EXPECT_EQ(child.block_table, parent.block_table);
  EXPECT_EQ(bm.ref_count(0), 2);
  EXPECT_EQ(bm.ref_count(1), 2);
  EXPECT_EQ(bm.num_free_blocks(), 6);

  // The child writes position 6, inside shared block 1: it gets block 2, a copy of block 1.
  child.token_ids.push_back(70);
  std::vector<BlockCopy> copies;
  ASSERT_TRUE(bm.allocate_slots(child, 1, &copies));
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies[0].src, 1);
  EXPECT_EQ(copies[0].dst, 2);
  EXPECT_EQ(child.block_table, (std::vector<int>{0, 2}));
  EXPECT_EQ(bm.ref_count(0), 2);
  EXPECT_EQ(bm.ref_count(1), 1);
  EXPECT_EQ(bm.ref_count(2), 1);

  // The parent now owns block 1 alone: no copy.
  parent.token_ids.push_back(60);
  copies.clear();
  ASSERT_TRUE(bm.allocate_slots(parent, 1, &copies));
  EXPECT_TRUE(copies.empty());
  EXPECT_EQ(parent.block_table, (std::vector<int>{0, 1}));
  bm.free(parent);
  EXPECT_EQ(bm.ref_count(0), 1);
  bm.free(child);
  expect_all_free(bm);
}

TEST(BlockManager, NoCopyWhenTheForkPointEndsABlock) {
  BlockManager bm(8, 4, false);
  Sequence parent = make_seq(1, iota_tokens(8, 0));  // blocks 0, 1, both full
  ASSERT_TRUE(bm.allocate_slots(parent, 8, nullptr));
  parent.num_computed_tokens = 8;
  Sequence child = make_seq(2, parent.token_ids);
  child.num_computed_tokens = 8;
  bm.fork(parent, child);
  child.token_ids.push_back(80);
  std::vector<BlockCopy> copies;
  ASSERT_TRUE(bm.allocate_slots(child, 1, &copies));
  EXPECT_TRUE(copies.empty());
  EXPECT_EQ(child.block_table, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(bm.ref_count(0), 2);
  EXPECT_EQ(bm.ref_count(1), 2);
  bm.free(child);
  bm.free(parent);
  expect_all_free(bm);
}

TEST(BlockManager, FailedAllocationChangesNothing) {
  {
    BlockManager bm(4, 4, false);
    Sequence a = make_seq(1, iota_tokens(12, 0));
    ASSERT_TRUE(bm.allocate_slots(a, 12, nullptr));  // blocks 0 1 2
    Sequence b = make_seq(2, iota_tokens(5, 100));  // needs 2, 1 free
    EXPECT_FALSE(bm.allocate_slots(b, 5, nullptr));
    EXPECT_TRUE(b.block_table.empty());
    EXPECT_EQ(bm.num_free_blocks(), 1);
    // The failure did not consume the free block: a 1-block request still gets block 3.
    Sequence c = make_seq(3, iota_tokens(4, 200));
    ASSERT_TRUE(bm.allocate_slots(c, 4, nullptr));
    EXPECT_EQ(c.block_table, (std::vector<int>{3}));
    bm.free(a);
    bm.free(c);
    expect_all_free(bm);
  }
  {
    // Copy-on-write plus growth: needs 2 fresh blocks, 1 free.
    BlockManager bm(3, 4, false);
    Sequence parent = make_seq(1, iota_tokens(6, 0));
    ASSERT_TRUE(bm.allocate_slots(parent, 6, nullptr));
    parent.num_computed_tokens = 6;
    Sequence child = make_seq(2, parent.token_ids);
    child.num_computed_tokens = 6;
    bm.fork(parent, child);
    for (int32_t t : {1, 2, 3}) child.token_ids.push_back(t);
    std::vector<BlockCopy> copies;
    EXPECT_FALSE(bm.allocate_slots(child, 3, &copies));
    EXPECT_TRUE(copies.empty());
    EXPECT_EQ(child.block_table, (std::vector<int>{0, 1}));
    EXPECT_EQ(bm.ref_count(0), 2);
    EXPECT_EQ(bm.ref_count(1), 2);
    EXPECT_EQ(bm.num_free_blocks(), 1);
    // Just the copy-on-write fits.
    child.token_ids.resize(7);
    ASSERT_TRUE(bm.allocate_slots(child, 1, &copies));
    ASSERT_EQ(copies.size(), 1u);
    EXPECT_EQ(copies[0].src, 1);
    EXPECT_EQ(copies[0].dst, 2);
    bm.free(parent);
    bm.free(child);
    expect_all_free(bm);
  }
  {
    // Free hit blocks count against the free list: 4 blocks, the hit revives 2 of them.
    BlockManager bm(4, 4, true);
    Sequence a = make_seq(1, iota_tokens(9, 0));
    prefill(bm, a);
    bm.free(a);
    std::vector<int32_t> t = iota_tokens(17, 0);  // hit 8; 9 new tokens need 3 more blocks
    Sequence b = make_seq(2, t);
    b.num_computed_tokens = bm.lookup_prefix(b);
    EXPECT_EQ(b.num_computed_tokens, 8);
    EXPECT_FALSE(bm.allocate_slots(b, 9, nullptr));
    EXPECT_TRUE(b.block_table.empty());
    EXPECT_EQ(bm.num_free_blocks(), 4);
    for (int id = 0; id < 4; ++id) EXPECT_EQ(bm.ref_count(id), 0);
    // Nothing was evicted by the failed attempt.
    EXPECT_EQ(bm.lookup_prefix(b), 8);
    // One token shorter fits exactly: 2 hit + 2 fresh.
    Sequence c = make_seq(3, iota_tokens(16, 0));
    c.num_computed_tokens = bm.lookup_prefix(c);
    EXPECT_EQ(c.num_computed_tokens, 8);
    ASSERT_TRUE(bm.allocate_slots(c, 8, nullptr));
    EXPECT_EQ(bm.num_free_blocks(), 0);
    bm.free(c);
    expect_all_free(bm);
  }
}

// Random allocate / grow / fork / free with an emulated KV cache: each slot stores a digest of
// the token prefix that produced it (KV depends on all earlier tokens), copies are applied as the
// executor would, and every computed position of every live sequence must read back its own
// prefix digest. Reference counts must equal the number of table entries naming each block.
TEST(BlockManager, RandomOperationsKeepInvariants) {
  for (uint32_t seed : {1u, 2u, 3u, 4u}) {
    const int kBlocks = 24, kBs = 4;
    BlockManager bm(kBlocks, kBs, /*enable_prefix_caching=*/true);
    std::mt19937 rng(seed);
    std::vector<std::unique_ptr<Sequence>> live;
    std::vector<std::vector<uint64_t>> cache(kBlocks, std::vector<uint64_t>(kBs, 0));
    auto digest = [](const Sequence& s, int pos) {  // FNV-1a over tokens [0, pos]
      uint64_t h = 1469598103934665603ULL;
      for (int i = 0; i <= pos; ++i) h = (h ^ static_cast<uint32_t>(s.token_ids[i])) * 1099511628211ULL;
      return h;
    };
    auto compute = [&](Sequence& s, int n) {
      for (int p = s.num_computed_tokens; p < s.num_computed_tokens + n; ++p) {
        const int block = s.block_table[p / kBs];
        ASSERT_EQ(bm.ref_count(block), 1) << "write into a shared block";
        cache[block][p % kBs] = digest(s, p);
      }
      s.num_computed_tokens += n;
      bm.cache_full_blocks(s);
    };
    int64_t next_id = 0;
    int num_hits = 0, num_copies = 0;
    for (int op = 0; op < 3000; ++op) {
      const int kind = rng() % 10;
      if (kind < 3 && live.size() < 8) {  // new sequence, prompts from a few shared stems
        const int stem = rng() % 3;
        std::vector<int32_t> t;
        for (int i = 0; i < static_cast<int>(rng() % 14); ++i) t.push_back(stem * 10 + i % 5);
        for (int i = 0, n = 1 + rng() % 6; i < n; ++i) t.push_back(rng() % 50);
        auto s = std::make_unique<Sequence>(make_seq(next_id++, t));
        s->use_prefix_cache = rng() % 5 != 0;
        s->num_computed_tokens = bm.lookup_prefix(*s);
        if (s->num_computed_tokens > 0) ++num_hits;
        if (bm.allocate_slots(*s, s->num_tokens() - s->num_computed_tokens, nullptr)) {
          compute(*s, s->num_tokens() - s->num_computed_tokens);
          live.push_back(std::move(s));
        } else {
          EXPECT_TRUE(s->block_table.empty());
        }
      } else if (kind < 6 && !live.empty()) {  // decode: append a token and compute it
        Sequence& s = *live[rng() % live.size()];
        s.token_ids.push_back(rng() % 50);
        std::vector<BlockCopy> copies;
        const size_t before = s.block_table.size();
        if (bm.allocate_slots(s, 1, &copies)) {
          for (const BlockCopy& c : copies) cache[c.dst] = cache[c.src];
          num_copies += static_cast<int>(copies.size());
          compute(s, 1);
        } else {
          EXPECT_TRUE(copies.empty());
          EXPECT_EQ(s.block_table.size(), before);
          s.token_ids.pop_back();
        }
      } else if (kind < 8 && !live.empty() && live.size() < 8) {  // fork
        const Sequence& p = *live[rng() % live.size()];
        auto c = std::make_unique<Sequence>(make_seq(next_id++, p.token_ids));
        c->use_prefix_cache = p.use_prefix_cache;
        c->num_computed_tokens = p.num_computed_tokens;
        bm.fork(p, *c);
        live.push_back(std::move(c));
      } else if (!live.empty()) {  // free
        const size_t i = rng() % live.size();
        bm.free(*live[i]);
        live.erase(live.begin() + i);
      }

      std::map<int, int> uses;
      for (const auto& s : live) {
        ASSERT_GE(static_cast<int>(s->block_table.size()), bm.blocks_for_tokens(s->num_computed_tokens));
        std::set<int> own(s->block_table.begin(), s->block_table.end());
        ASSERT_EQ(own.size(), s->block_table.size()) << "a block twice in one table";
        for (int b : s->block_table) ++uses[b];
        for (int p = 0; p < s->num_computed_tokens; ++p) {
          ASSERT_EQ(cache[s->block_table[p / kBs]][p % kBs], digest(*s, p))
              << "seed " << seed << " op " << op << " seq " << s->seq_id << " pos " << p;
        }
      }
      int num_unused = 0;
      for (int b = 0; b < kBlocks; ++b) {
        ASSERT_EQ(bm.ref_count(b), uses.count(b) ? uses[b] : 0) << "block " << b;
        if (!uses.count(b)) ++num_unused;
      }
      ASSERT_EQ(bm.num_free_blocks(), num_unused);
    }
    EXPECT_GT(num_hits, 20) << "the test should exercise prefix hits";
    EXPECT_GT(num_copies, 20) << "the test should exercise copy-on-write";
    for (auto& s : live) bm.free(*s);
    expect_all_free(bm);
  }
}

}  // namespace
}  // namespace llmcore
