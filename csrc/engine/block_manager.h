// BlockManager: pure bookkeeping of the paged KV cache: which block ids are free, who references
// each block, and which full blocks hold which token prefix (prefix caching by a hash chain).
// It never touches device memory; copies it decides on are returned for the executor to do.
//
// Block states:
//   free (ref_count = 0, maybe still holding a cached hash; in the free list, LRU order)
//   -> in use (ref_count >= 1)        by allocate_slots / a prefix-cache hit / fork
//   -> free                           when the last referencing sequence is freed
// A free block that still holds a hash can be revived by a prefix-cache hit until it is
// handed out again for new tokens, which evicts its hash.
//
// A block's hash covers its tokens and its parent's hash. When generated-token rows are computed
// by another kernel than prompt rows (backend.h, RowKinds; separate_generated_blocks), a block
// holding generated tokens also hashes where its sequence's prompt ends, so that a block whose
// tokens one request generated never stands in for the same tokens in another request's prompt
// (DESIGN.md principle 6: a hit gives the bits a miss would). Blocks wholly inside the prompt hash
// the same either way.
#pragma once

#include <cstdint>
#include <list>
#include <unordered_map>
#include <utility>
#include <vector>

#include "engine/sequence.h"

namespace llmcore {

struct BlockCopy {
  int src;
  int dst;
};

class BlockManager {
 public:
  // separate_generated_blocks: blocks holding generated tokens hash with the prompt's end (above);
  // set when generated-token rows are computed apart (ExecutorConfig::generated_rows_apart).
  BlockManager(int num_blocks, int block_size, bool enable_prefix_caching, bool separate_generated_blocks = false);

  int num_blocks() const { return num_blocks_; }
  int block_size() const { return block_size_; }
  int num_free_blocks() const;            // includes free blocks that still hold a cached hash
  double usage() const;                   // 1 - free / total
  int blocks_for_tokens(int num_tokens) const { return (num_tokens + block_size_ - 1) / block_size_; }

  // For a sequence not yet holding blocks: how many leading tokens are already in cached full
  // blocks. Always leaves at least the last prompt token uncached (its logits are needed), so the
  // result is a multiple of block_size <= num_tokens - 1. 0 when prefix caching is off for the
  // manager or the sequence. Counts a prefix-cache query and its hit tokens in the stats.
  // Leaves the hit blocks' hashes in seq.block_hashes, which the next allocate_slots attaches.
  int lookup_prefix(Sequence& seq);

  // Makes seq's block table cover num_computed_tokens + num_new_tokens tokens. On a sequence
  // holding no blocks it first attaches the cached prefix found by lookup_prefix (the caller has
  // already set num_computed_tokens to that hit). If the first block to be written is shared
  // (ref_count > 1, after fork) it is copied first: a fresh block replaces it in seq's table and
  // {old, new} is appended to `copies`. Returns false and changes nothing when there are not
  // enough free blocks.
  bool allocate_slots(Sequence& seq, int num_new_tokens, std::vector<BlockCopy>* copies);

  // After the step computed tokens up to seq.num_computed_tokens: registers the hashes of the
  // sequence's newly full blocks so later requests can hit them.
  void cache_full_blocks(Sequence& seq);

  // Releases every block of seq (ref_count -1 each; blocks reaching 0 return to the free list,
  // keeping their hash for reuse). Clears seq.block_table and seq.block_hashes.
  void free(Sequence& seq);

  // child shares all of parent's blocks (ref_count +1 each) and copies its hash chain.
  void fork(const Sequence& parent, Sequence& child);

  int ref_count(int block_id) const { return blocks_[block_id].ref_count; }

  // Prefix-cache statistics since construction, in tokens (vLLM's prefix_cache_queries/hits).
  int64_t prefix_cache_queries() const { return prefix_cache_queries_; }
  int64_t prefix_cache_hits() const { return prefix_cache_hits_; }

 private:
  struct Block {
    int ref_count = 0;
    uint64_t hash = 0;
    bool has_hash = false;
    std::list<int>::iterator free_pos;  // valid while ref_count == 0
  };

  // Hash of block `index` of seq (its parent's hash given).
  uint64_t hash_block(uint64_t parent_hash, const Sequence& seq, int index) const;
  bool prefix_caching_applies(const Sequence& seq) const;  // manager and sequence both allow it
  int take_free_block();        // pops the least recently freed block, evicting its hash
  void release_block(int block_id);

  int num_blocks_;
  int block_size_;
  bool enable_prefix_caching_;
  bool separate_generated_blocks_;
  std::vector<Block> blocks_;
  std::list<int> free_list_;    // front: next to hand out
  std::unordered_map<uint64_t, int> cached_;  // hash -> block id
  int64_t prefix_cache_queries_ = 0;
  int64_t prefix_cache_hits_ = 0;
};

}  // namespace llmcore
