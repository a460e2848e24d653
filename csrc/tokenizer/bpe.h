// The BPE model of tokenizer.json: vocabulary, ranked merges and the options Hugging Face
// tokenizers implement (ignore_merges, byte_fallback, unk_token / fuse_unk,
// continuing_subword_prefix, end_of_word_suffix). dropout must be null (or 0): sampling merges
// would make encode() nondeterministic, so a file asking for it is refused.
//
// Encoding a piece applies merges lowest rank first (leftmost on ties) with a priority queue
// over a linked list of symbols, O(n log n) in the piece length; results are cached per piece.
// All methods are const and safe to call from several threads at once.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace llmcore {

// Bounded cache of piece -> token ids, shared by all threads. Keys and ids live in two arenas,
// so a lookup allocates nothing. When it holds kCapacity pieces it is emptied and refilled:
// a cheap bound that keeps the pieces of the current traffic.
class BpeWordCache {
 public:
  static constexpr size_t kCapacity = 1 << 16;
  static constexpr size_t kMaxWordBytes = 256;  // longer pieces are not cached (Hugging Face too)

  BpeWordCache();
  // Appends the cached ids of `word` to ids; false when not cached.
  bool lookup(std::string_view word, size_t hash, std::vector<int32_t>* ids) const;
  void insert(std::string_view word, size_t hash, const int32_t* ids, size_t num_ids);

 private:
  struct Slot {
    size_t hash = 0;  // 0: empty
    uint32_t key_offset = 0;
    uint32_t key_size = 0;
    uint32_t ids_offset = 0;
    uint32_t ids_size = 0;
  };
  static constexpr size_t kNumSlots = kCapacity * 2;  // power of two, load <= 0.5

  void clear_locked();

  mutable std::mutex mutex_;
  std::vector<Slot> slots_;     // [kNumSlots] open addressing, linear probing
  std::string keys_;            // concatenated cached pieces
  std::vector<int32_t> ids_;    // concatenated cached ids
  size_t size_ = 0;             // pieces cached
};

// Open-addressing map (left id, right id) -> merge: the hot lookup of merge_word, several per
// symbol, so kept flat instead of node-based.
class MergeTable {
 public:
  struct Merge {
    uint32_t rank = 0;
    int32_t new_id = -1;
  };
  void reserve(size_t num_merges);
  // Overwrites an existing entry: a pair listed twice keeps its last rank, as in Hugging Face.
  void insert(int32_t left, int32_t right, Merge merge);
  const Merge* find(int32_t left, int32_t right) const {
    if (slots_.empty()) return nullptr;
    const uint64_t key = pack(left, right);
    for (size_t i = hash(key);; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.key == key) return &slot.merge;
      if (slot.key == kEmpty) return nullptr;
    }
  }
  bool empty() const { return size_ == 0; }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};  // ids are < 2^31: never a real key
  struct Slot {
    uint64_t key = kEmpty;
    Merge merge;
  };
  static uint64_t pack(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }
  size_t hash(uint64_t key) const { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> shift_); }

  std::vector<Slot> slots_;  // power-of-two size, load <= 0.5
  size_t mask_ = 0;
  int shift_ = 64;
  size_t size_ = 0;
};

class BpeModel {
 public:
  // j: tokenizer.json's "model" object with type BPE. origin names it in errors.
  BpeModel(const nlohmann::json& j, const std::string& origin);

  // Appends the ids of one pre-tokenized piece (valid UTF-8, non-empty).
  void tokenize(std::string_view piece, std::vector<int32_t>* ids) const;

  int32_t token_to_id(std::string_view token) const;  // -1 when not in the vocabulary
  const std::string* id_to_token(int32_t id) const;   // nullptr when no token has this id
  int vocab_size() const { return static_cast<int>(key_of_id_.size()); }  // largest id + 1
  int num_tokens() const { return static_cast<int>(vocab_keys_.size()); }  // entries of "vocab"

 private:
  // Splits the piece into characters (with prefix / suffix, byte fallback and unk rules) and
  // applies the merges; appends the final ids.
  void merge_word(std::string_view piece, std::vector<int32_t>* ids) const;

  std::vector<std::string> vocab_keys_;  // [num_tokens] the strings of "vocab"
  std::vector<int32_t> key_of_id_;       // [vocab_size] index into vocab_keys_, -1 for unused ids
  std::unordered_map<std::string_view, int32_t> vocab_;  // views into vocab_keys_ -> id
  MergeTable merges_;
  std::array<int32_t, 128> ascii_ids_{};                 // id of each ASCII character, or -1
  std::array<int32_t, 256> byte_ids_{};                  // "<0xXX>" ids for byte_fallback, or -1
  bool ignore_merges_ = false;
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;
  std::string unk_token_;  // "" when none
  int32_t unk_id_ = -1;    // -1 when unk_token_ is empty or not in the vocabulary
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  std::string origin_;
  mutable BpeWordCache cache_;
};

}  // namespace llmcore
