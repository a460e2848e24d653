#include "tokenizer/bpe.h"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <limits>
#include <queue>

#include "tokenizer/hf_json.h"

namespace llmcore {

namespace {

using hf_json::json;

size_t char_length_at(std::string_view s, size_t pos) {
  const auto lead = static_cast<uint8_t>(s[pos]);
  if (lead < 0x80) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return 4;
}

// One merge the priority queue may apply: symbols[pos] with its right neighbour.
struct Candidate {
  uint32_t rank;
  int32_t pos;
  int32_t new_id;
  // std::priority_queue pops the largest: lowest rank first, leftmost among equal ranks.
  bool operator<(const Candidate& other) const {
    return rank != other.rank ? rank > other.rank : pos > other.pos;
  }
};

struct Symbol {
  int32_t id;
  int32_t prev;  // index into symbols, -1 at the start
  int32_t next;  // index into symbols, -1 at the end
  uint32_t len;  // bytes of the piece it covers; 0 once merged into its left neighbour
};

}  // namespace

BpeWordCache::BpeWordCache() = default;

void BpeWordCache::clear_locked() {
  slots_.assign(kNumSlots, Slot{});
  keys_.clear();
  ids_.clear();
  size_ = 0;
}

bool BpeWordCache::lookup(std::string_view word, size_t hash, std::vector<int32_t>* ids) const {
  if (hash == 0) hash = 1;
  std::lock_guard<std::mutex> lock(mutex_);
  if (slots_.empty()) return false;
  for (size_t i = hash & (kNumSlots - 1);; i = (i + 1) & (kNumSlots - 1)) {
    const Slot& slot = slots_[i];
    if (slot.hash == 0) return false;
    if (slot.hash == hash && slot.key_size == word.size() &&
        std::string_view(keys_).substr(slot.key_offset, slot.key_size) == word) {
      ids->insert(ids->end(), ids_.begin() + slot.ids_offset,
                  ids_.begin() + slot.ids_offset + slot.ids_size);
      return true;
    }
  }
}

void BpeWordCache::insert(std::string_view word, size_t hash, const int32_t* ids, size_t num_ids) {
  if (hash == 0) hash = 1;
  std::lock_guard<std::mutex> lock(mutex_);
  if (slots_.empty() || size_ >= kCapacity) clear_locked();
  size_t i = hash & (kNumSlots - 1);
  for (;; i = (i + 1) & (kNumSlots - 1)) {
    const Slot& slot = slots_[i];
    if (slot.hash == 0) break;
    if (slot.hash == hash && std::string_view(keys_).substr(slot.key_offset, slot.key_size) == word) {
      return;  // another thread cached it first
    }
  }
  Slot& slot = slots_[i];
  slot.hash = hash;
  slot.key_offset = static_cast<uint32_t>(keys_.size());
  slot.key_size = static_cast<uint32_t>(word.size());
  slot.ids_offset = static_cast<uint32_t>(ids_.size());
  slot.ids_size = static_cast<uint32_t>(num_ids);
  keys_.append(word);
  ids_.insert(ids_.end(), ids, ids + num_ids);
  ++size_;
}

void MergeTable::reserve(size_t num_merges) {
  size_t capacity = 16;
  while (capacity < 2 * num_merges) capacity *= 2;
  slots_.assign(capacity, Slot{});
  mask_ = capacity - 1;
  shift_ = 64;
  for (size_t c = capacity; c > 1; c >>= 1) --shift_;
  size_ = 0;
}

void MergeTable::insert(int32_t left, int32_t right, Merge merge) {
  LLMCORE_CHECK(!slots_.empty() && 2 * (size_ + 1) <= slots_.size(), "MergeTable over capacity");
  const uint64_t key = pack(left, right);
  for (size_t i = hash(key);; i = (i + 1) & mask_) {
    Slot& slot = slots_[i];
    if (slot.key == key) {
      slot.merge = merge;
      return;
    }
    if (slot.key == kEmpty) {
      slot.key = key;
      slot.merge = merge;
      ++size_;
      return;
    }
  }
}

BpeModel::BpeModel(const json& j, const std::string& origin) : origin_(origin) {
  auto dropout = j.find("dropout");
  if (dropout != j.end() && !dropout->is_null()) {
    LLMCORE_CHECK_ARG(dropout->is_number() && dropout->get<double>() == 0.0, origin,
                      ": dropout ", dropout->dump(),
                      " is not supported (only null or 0: BPE dropout makes encoding random)");
  }
  ignore_merges_ = hf_json::get_bool_or(j, "ignore_merges", false, origin);
  byte_fallback_ = hf_json::get_bool_or(j, "byte_fallback", false, origin);
  fuse_unk_ = hf_json::get_bool_or(j, "fuse_unk", false, origin);
  unk_token_ = hf_json::get_string_or(j, "unk_token", "", origin);
  continuing_subword_prefix_ = hf_json::get_string_or(j, "continuing_subword_prefix", "", origin);
  end_of_word_suffix_ = hf_json::get_string_or(j, "end_of_word_suffix", "", origin);

  const json& vocab = hf_json::require(j, "vocab", origin);
  LLMCORE_CHECK_ARG(vocab.is_object(), origin, ": \"vocab\" must be an object of token -> id");
  vocab_keys_.reserve(vocab.size());  // vocab_ views these strings: no reallocation after this
  std::vector<int32_t> ids;
  ids.reserve(vocab.size());
  int32_t max_id = -1;
  for (const auto& [token, value] : vocab.items()) {
    LLMCORE_CHECK_ARG(value.is_number_unsigned() &&
                          value.get<uint64_t>() < static_cast<uint64_t>(std::numeric_limits<int32_t>::max()),
                      origin, ": vocab[\"", token, "\"] must be a token id in [0, ",
                      std::numeric_limits<int32_t>::max(), "), got ", value.dump());
    vocab_keys_.push_back(token);
    ids.push_back(value.get<int32_t>());
    max_id = std::max(max_id, ids.back());
  }
  key_of_id_.assign(static_cast<size_t>(max_id + 1), -1);
  vocab_.reserve(vocab_keys_.size());
  for (size_t k = 0; k < vocab_keys_.size(); ++k) {
    vocab_.emplace(vocab_keys_[k], ids[k]);
    key_of_id_[ids[k]] = static_cast<int32_t>(k);
  }

  if (!unk_token_.empty()) unk_id_ = token_to_id(unk_token_);
  for (int c = 0; c < 128; ++c) ascii_ids_[c] = token_to_id(std::string(1, static_cast<char>(c)));
  byte_ids_.fill(-1);
  if (byte_fallback_) {
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      byte_ids_[b] = token_to_id(name);
    }
  }

  const json& merges = hf_json::require(j, "merges", origin);
  LLMCORE_CHECK_ARG(merges.is_array(), origin, ": \"merges\" must be a list");
  merges_.reserve(merges.size());
  const size_t prefix_len = continuing_subword_prefix_.size();
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const json& merge = merges[rank];
    std::string left;
    std::string right;
    if (merge.is_string()) {
      // "left right": the older spelling, for tokens without spaces.
      const std::string text = merge.get<std::string>();
      const size_t space = text.find(' ');
      LLMCORE_CHECK_ARG(space != std::string::npos && text.find(' ', space + 1) == std::string::npos,
                        origin, ": merges[", rank, "] \"", text,
                        "\" must be two tokens separated by one space");
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else {
      LLMCORE_CHECK_ARG(merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
                            merge[1].is_string(),
                        origin, ": merges[", rank, "] must be \"a b\" or [\"a\", \"b\"], got ",
                        merge.dump());
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    }
    const int32_t left_id = token_to_id(left);
    const int32_t right_id = token_to_id(right);
    LLMCORE_CHECK_ARG(left_id >= 0 && right_id >= 0, origin, ": merges[", rank, "] (\"", left,
                      "\", \"", right, "\") uses a token that is not in the vocabulary");
    LLMCORE_CHECK_ARG(right.size() >= prefix_len, origin, ": merges[", rank, "] right token \"",
                      right, "\" is shorter than continuing_subword_prefix \"",
                      continuing_subword_prefix_, "\"");
    const std::string merged = left + right.substr(prefix_len);
    const int32_t new_id = token_to_id(merged);
    LLMCORE_CHECK_ARG(new_id >= 0, origin, ": merges[", rank, "] makes \"", merged,
                      "\", which is not in the vocabulary");
    // A pair listed twice keeps its last rank, as Hugging Face's map does.
    merges_.insert(left_id, right_id, MergeTable::Merge{static_cast<uint32_t>(rank), new_id});
  }
}

int32_t BpeModel::token_to_id(std::string_view token) const {
  auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

const std::string* BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= key_of_id_.size() || key_of_id_[id] < 0) return nullptr;
  return &vocab_keys_[key_of_id_[id]];
}

void BpeModel::tokenize(std::string_view piece, std::vector<int32_t>* ids) const {
  if (ignore_merges_) {
    // Pieces that are whole vocabulary tokens skip the merges (Llama-3's tiktoken-style BPE).
    const int32_t id = token_to_id(piece);
    if (id >= 0) {
      ids->push_back(id);
      return;
    }
  }
  const bool cacheable = piece.size() <= BpeWordCache::kMaxWordBytes;
  const size_t hash = cacheable ? std::hash<std::string_view>{}(piece) : 0;
  if (cacheable && cache_.lookup(piece, hash, ids)) return;
  const size_t first = ids->size();
  merge_word(piece, ids);
  if (cacheable) cache_.insert(piece, hash, ids->data() + first, ids->size() - first);
}

void BpeModel::merge_word(std::string_view piece, std::vector<int32_t>* ids) const {
  std::vector<Symbol> symbols;
  symbols.reserve(piece.size());
  auto add = [&](int32_t id, size_t len) {
    const auto index = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, index - 1, -1, static_cast<uint32_t>(len)});
    if (index > 0) symbols[index - 1].next = index;
  };

  // A run of unknown characters waiting to be emitted as unk (fused into one with fuse_unk).
  bool unk_pending = false;
  size_t unk_len = 0;
  std::string decorated;  // the character with continuing_subword_prefix / end_of_word_suffix
  for (size_t pos = 0; pos < piece.size();) {
    const size_t len = char_length_at(piece, pos);
    const bool is_first = pos == 0;
    const bool is_last = pos + len >= piece.size();
    std::string_view symbol = piece.substr(pos, len);
    pos += len;
    const bool add_prefix = !is_first && !continuing_subword_prefix_.empty();
    const bool add_suffix = is_last && !end_of_word_suffix_.empty();
    if (add_prefix || add_suffix) {
      decorated.clear();
      if (add_prefix) decorated += continuing_subword_prefix_;
      decorated.append(symbol);
      if (add_suffix) decorated += end_of_word_suffix_;
      symbol = decorated;
    }

    const int32_t id = (len == 1 && !add_prefix && !add_suffix)
                           ? ascii_ids_[static_cast<uint8_t>(symbol[0])]
                           : token_to_id(symbol);
    if (id >= 0) {
      if (unk_pending) {
        add(unk_id_, unk_len);
        unk_pending = false;
      }
      add(id, len);
      continue;
    }
    if (byte_fallback_) {
      bool all_bytes = true;
      for (char c : symbol) all_bytes = all_bytes && byte_ids_[static_cast<uint8_t>(c)] >= 0;
      if (all_bytes) {
        // Like Hugging Face, a pending unk is not flushed before byte tokens.
        for (char c : symbol) add(byte_ids_[static_cast<uint8_t>(c)], 1);
        continue;
      }
    }
    if (unk_token_.empty()) continue;  // no unk token: the character is dropped, as in HF
    LLMCORE_CHECK_ARG(unk_id_ >= 0, origin_, ": unk_token \"", unk_token_,
                      "\" is needed for a character of \"", piece, "\" but is not in the vocabulary");
    if (unk_pending && fuse_unk_) {
      unk_len += len;
      continue;
    }
    if (unk_pending) add(unk_id_, unk_len);
    unk_pending = true;
    unk_len = len;
  }
  if (unk_pending) add(unk_id_, unk_len);

  if (symbols.size() > 1 && !merges_.empty()) {
    std::priority_queue<Candidate> queue;
    auto push_pair = [&](int32_t pos) {
      const int32_t next = symbols[pos].next;
      if (next < 0) return;
      const MergeTable::Merge* merge = merges_.find(symbols[pos].id, symbols[next].id);
      if (merge != nullptr) queue.push({merge->rank, pos, merge->new_id});
    };
    for (int32_t pos = 0; pos + 1 < static_cast<int32_t>(symbols.size()); ++pos) push_pair(pos);
    while (!queue.empty()) {
      const Candidate top = queue.top();
      queue.pop();
      Symbol& left = symbols[top.pos];
      if (left.len == 0 || left.next < 0) continue;
      const int32_t right_pos = left.next;
      // Stale entry: the pair at pos changed since it was queued.
      const MergeTable::Merge* merge = merges_.find(left.id, symbols[right_pos].id);
      if (merge == nullptr || merge->new_id != top.new_id) continue;
      Symbol& right = symbols[right_pos];
      left.id = top.new_id;
      left.len += right.len;
      left.next = right.next;
      right.len = 0;
      if (left.next >= 0) symbols[left.next].prev = top.pos;
      if (left.prev >= 0) push_pair(left.prev);
      push_pair(top.pos);
    }
  }
  for (const Symbol& symbol : symbols) {
    if (symbol.len != 0) ids->push_back(symbol.id);
  }
}

}  // namespace llmcore
