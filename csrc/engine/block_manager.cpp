// BlockManager: free list in LRU order, reference counts, and the prefix cache (hash chain of
// full blocks -> block id). See block_manager.h for the block states.
#include "engine/block_manager.h"

#include <algorithm>

#include "core/error.h"

namespace llmcore {

namespace {

// Parent hash of block 0: an arbitrary constant, so that block 0's hash still mixes a parent.
constexpr uint64_t kRootHash = 0x6c6c6d636f726521ULL;

// splitmix64 finalizer: a bijection on 64 bits with full avalanche.
inline uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

BlockManager::BlockManager(int num_blocks, int block_size, bool enable_prefix_caching, bool separate_generated_blocks)
    : num_blocks_(num_blocks),
      block_size_(block_size),
      enable_prefix_caching_(enable_prefix_caching),
      separate_generated_blocks_(separate_generated_blocks) {
  LLMCORE_CHECK_ARG(num_blocks >= 1, "num_blocks must be >= 1, got ", num_blocks);
  LLMCORE_CHECK_ARG(block_size >= 1, "block_size must be >= 1, got ", block_size);
  blocks_.resize(num_blocks);
  for (int id = 0; id < num_blocks; ++id) {
    blocks_[id].free_pos = free_list_.insert(free_list_.end(), id);
  }
}

int BlockManager::num_free_blocks() const { return static_cast<int>(free_list_.size()); }

double BlockManager::usage() const {
  return 1.0 - static_cast<double>(num_free_blocks()) / static_cast<double>(num_blocks_);
}

uint64_t BlockManager::hash_block(uint64_t parent_hash, const Sequence& seq, int index) const {
  const int32_t* tokens = seq.token_ids.data() + static_cast<size_t>(index) * block_size_;
  uint64_t h = mix64(parent_hash);
  for (int i = 0; i < block_size_; ++i) {
    h = mix64(h ^ static_cast<uint64_t>(static_cast<uint32_t>(tokens[i])));
  }
  // How many of the block's tokens are prompt tokens, when not all are and that matters (header).
  const int prompt_in_block = std::clamp(seq.num_prompt_tokens - index * block_size_, 0, block_size_);
  if (separate_generated_blocks_ && prompt_in_block < block_size_)
    h = mix64(h ^ (0x67656e65726174ull + static_cast<uint64_t>(prompt_in_block)));
  return h;
}

bool BlockManager::prefix_caching_applies(const Sequence& seq) const {
  return enable_prefix_caching_ && seq.use_prefix_cache;
}

int BlockManager::lookup_prefix(Sequence& seq) {
  LLMCORE_CHECK(seq.block_table.empty(), "lookup_prefix on sequence ", seq.seq_id,
                " that already holds ", seq.block_table.size(), " blocks");
  if (!prefix_caching_applies(seq)) {
    seq.block_hashes.clear();
    return 0;
  }
  // The last token must be computed to get its logits, so the block holding it never hits.
  const int max_hit_blocks = std::max(seq.num_tokens() - 1, 0) / block_size_;
  // Hashes already in seq.block_hashes are the chain of the same (immutable) leading tokens.
  if (static_cast<int>(seq.block_hashes.size()) > max_hit_blocks) {
    seq.block_hashes.resize(max_hit_blocks);
  }
  int num_hit_blocks = 0;
  while (num_hit_blocks < max_hit_blocks) {
    if (num_hit_blocks == static_cast<int>(seq.block_hashes.size())) {
      const uint64_t parent = num_hit_blocks == 0 ? kRootHash : seq.block_hashes.back();
      seq.block_hashes.push_back(
          hash_block(parent, seq, num_hit_blocks));
    }
    if (cached_.find(seq.block_hashes[num_hit_blocks]) == cached_.end()) break;
    ++num_hit_blocks;
  }
  // Keep only the hashes of the hit blocks: allocate_slots attaches exactly these.
  seq.block_hashes.resize(num_hit_blocks);
  const int num_hit_tokens = num_hit_blocks * block_size_;
  prefix_cache_queries_ += seq.num_tokens();
  prefix_cache_hits_ += num_hit_tokens;
  return num_hit_tokens;
}

bool BlockManager::allocate_slots(Sequence& seq, int num_new_tokens, std::vector<BlockCopy>* copies) {
  LLMCORE_CHECK(num_new_tokens >= 0, "num_new_tokens = ", num_new_tokens);
  LLMCORE_CHECK(seq.num_computed_tokens >= 0, "num_computed_tokens = ", seq.num_computed_tokens);
  const int num_computed = seq.num_computed_tokens;
  const int num_needed_blocks = blocks_for_tokens(num_computed + num_new_tokens);

  // A sequence with no blocks first attaches its prefix-cache hit: the blocks of its first
  // num_computed / block_size hashes (found by lookup_prefix just before).
  const bool first_allocation = seq.block_table.empty();
  std::vector<int> hit_blocks;
  int num_hit_free = 0;  // hit blocks now in the free list: attaching them takes them out of it
  if (first_allocation && num_computed > 0) {
    LLMCORE_CHECK(prefix_caching_applies(seq) && num_computed % block_size_ == 0 &&
                      num_computed / block_size_ <= static_cast<int>(seq.block_hashes.size()),
                  "sequence ", seq.seq_id, " has num_computed_tokens = ", num_computed,
                  " but no blocks; it must come from lookup_prefix");
    const int num_hit = num_computed / block_size_;
    hit_blocks.reserve(num_hit);
    for (int i = 0; i < num_hit; ++i) {
      auto it = cached_.find(seq.block_hashes[i]);
      LLMCORE_CHECK(it != cached_.end(), "prefix block ", i, " of sequence ", seq.seq_id,
                    " was evicted between lookup_prefix and allocate_slots");
      hit_blocks.push_back(it->second);
      if (blocks_[it->second].ref_count == 0) ++num_hit_free;
    }
  }
  const int num_table_blocks =
      first_allocation ? static_cast<int>(hit_blocks.size()) : static_cast<int>(seq.block_table.size());
  LLMCORE_CHECK(num_table_blocks >= blocks_for_tokens(num_computed), "sequence ", seq.seq_id,
                " has ", num_table_blocks, " blocks for ", num_computed, " computed tokens");

  // Blocks this step writes (positions num_computed .. num_computed + num_new - 1) that are
  // already in the table but shared after a fork: each needs a private replacement.
  std::vector<int> shared_positions;  // indices into block_table
  if (num_new_tokens > 0) {
    const int first_write = num_computed / block_size_;
    const int last_held = std::min(num_table_blocks, num_needed_blocks);
    for (int i = first_write; i < last_held; ++i) {
      if (blocks_[seq.block_table[i]].ref_count > 1) shared_positions.push_back(i);
    }
  }
  const int num_fresh = static_cast<int>(shared_positions.size()) +
                        std::max(num_needed_blocks - num_table_blocks, 0);
  if (num_fresh > num_free_blocks() - num_hit_free) return false;

  // From here on nothing can fail.
  for (int id : hit_blocks) {
    Block& block = blocks_[id];
    if (block.ref_count == 0) free_list_.erase(block.free_pos);
    ++block.ref_count;
    seq.block_table.push_back(id);
  }
  // Hashes lookup_prefix computed beyond what the caller took as computed are not ours yet.
  if (first_allocation) seq.block_hashes.resize(hit_blocks.size());
  for (int i : shared_positions) {
    const int old_id = seq.block_table[i];
    const int new_id = take_free_block();
    --blocks_[old_id].ref_count;  // stays >= 1: it was shared
    seq.block_table[i] = new_id;
    // Only a block holding computed tokens has content worth copying.
    if (copies != nullptr && i * block_size_ < num_computed) copies->push_back({old_id, new_id});
  }
  while (static_cast<int>(seq.block_table.size()) < num_needed_blocks) {
    seq.block_table.push_back(take_free_block());
  }
  return true;
}

void BlockManager::cache_full_blocks(Sequence& seq) {
  if (!prefix_caching_applies(seq)) return;
  const int num_full = seq.num_computed_tokens / block_size_;
  LLMCORE_CHECK(num_full <= static_cast<int>(seq.block_table.size()), "sequence ", seq.seq_id,
                " has ", num_full, " full computed blocks but a table of ", seq.block_table.size());
  LLMCORE_CHECK(seq.num_computed_tokens <= seq.num_tokens(), "sequence ", seq.seq_id, " computed ",
                seq.num_computed_tokens, " of ", seq.num_tokens(), " tokens");
  for (int i = static_cast<int>(seq.block_hashes.size()); i < num_full; ++i) {
    const uint64_t parent = i == 0 ? kRootHash : seq.block_hashes.back();
    const uint64_t h = hash_block(parent, seq, i);
    seq.block_hashes.push_back(h);
    Block& block = blocks_[seq.block_table[i]];
    if (block.has_hash) {
      // Shared with a fork that registered it first: same tokens, same hash.
      LLMCORE_CHECK(block.hash == h, "block ", seq.block_table[i], " re-registered with another hash");
      continue;
    }
    // The same prefix computed twice (two requests admitted together): the first block keeps
    // the entry and this one stays private.
    if (cached_.count(h) != 0) continue;
    block.hash = h;
    block.has_hash = true;
    cached_.emplace(h, seq.block_table[i]);
  }
}

void BlockManager::free(Sequence& seq) {
  // Tail first, so that the tail (the part least likely to be shared by a later prompt) is
  // nearer the front of the free list and evicted before the head.
  for (auto it = seq.block_table.rbegin(); it != seq.block_table.rend(); ++it) release_block(*it);
  seq.block_table.clear();
  seq.block_hashes.clear();
}

void BlockManager::fork(const Sequence& parent, Sequence& child) {
  LLMCORE_CHECK(child.block_table.empty(), "fork into sequence ", child.seq_id, " that holds ",
                child.block_table.size(), " blocks");
  for (int id : parent.block_table) {
    LLMCORE_CHECK(blocks_[id].ref_count >= 1, "parent block ", id, " is free");
    ++blocks_[id].ref_count;
  }
  child.block_table = parent.block_table;
  child.block_hashes = parent.block_hashes;
}

int BlockManager::take_free_block() {
  LLMCORE_CHECK(!free_list_.empty(), "no free block");
  const int id = free_list_.front();
  free_list_.pop_front();
  Block& block = blocks_[id];
  LLMCORE_CHECK(block.ref_count == 0, "block ", id, " in the free list has ref_count ", block.ref_count);
  if (block.has_hash) {
    auto it = cached_.find(block.hash);
    if (it != cached_.end() && it->second == id) cached_.erase(it);
    block.has_hash = false;
  }
  block.ref_count = 1;
  return id;
}

void BlockManager::release_block(int block_id) {
  Block& block = blocks_[block_id];
  LLMCORE_CHECK(block.ref_count >= 1, "block ", block_id, " released while free");
  if (--block.ref_count == 0) block.free_pos = free_list_.insert(free_list_.end(), block_id);
}

}  // namespace llmcore
