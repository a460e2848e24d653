#include "tokenizer/hf_added_vocabulary.h"

#include <algorithm>

#include "core/error.h"
#include "tokenizer/bpe.h"
#include "tokenizer/hf_regex.h"
#include "tokenizer/normalizers.h"
#include "tokenizer/unicode_chars.h"

namespace llmcore {

namespace {

// Rust regex's \w, which Hugging Face uses for single_word: Alphabetic, marks, decimal digits,
// connector punctuation and the joiners ZWNJ / ZWJ.
bool is_word_char_at(std::string_view s, size_t pos, size_t len) {
  static const Regex word("[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]",
                          "single_word");
  bool found = false;
  word.for_each_match(s.substr(pos, len), [&](size_t start, size_t) { found = found || start == 0; });
  return found;
}

size_t char_start_before(std::string_view s, size_t end) {
  size_t start = end - 1;
  while (start > 0 && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) --start;
  return start;
}

}  // namespace

TokenTrie::TokenTrie() : nodes_(1) {}

void TokenTrie::add(std::string_view key, int32_t value) {
  if (key.empty()) return;
  first_byte_[static_cast<uint8_t>(key[0])] = true;
  int32_t node = 0;
  for (char c : key) {
    const auto byte = static_cast<uint8_t>(c);
    auto& children = nodes_[node].children;
    auto it = std::lower_bound(children.begin(), children.end(), byte,
                               [](const auto& child, uint8_t b) { return child.first < b; });
    if (it != children.end() && it->first == byte) {
      node = it->second;
      continue;
    }
    const auto child = static_cast<int32_t>(nodes_.size());
    children.insert(it, {byte, child});  // invalidates `children` only after use
    nodes_.emplace_back();
    node = child;
  }
  if (nodes_[node].value < 0) nodes_[node].value = value;
}

int32_t TokenTrie::longest_at(std::string_view s, size_t pos, size_t* len) const {
  int32_t node = 0;
  int32_t best = -1;
  for (size_t i = pos; i < s.size(); ++i) {
    const auto byte = static_cast<uint8_t>(s[i]);
    const auto& children = nodes_[node].children;
    auto it = std::lower_bound(children.begin(), children.end(), byte,
                               [](const auto& child, uint8_t b) { return child.first < b; });
    if (it == children.end() || it->first != byte) break;
    node = it->second;
    if (nodes_[node].value >= 0) {
      best = nodes_[node].value;
      *len = i + 1 - pos;
    }
  }
  return best;
}

int32_t HfAddedVocabulary::resolve_id(const std::string& content, const BpeModel& model) const {
  auto it = ids_.find(content);
  if (it != ids_.end()) return it->second;
  const int32_t in_model = model.token_to_id(content);
  if (in_model >= 0) return in_model;
  const auto model_size = static_cast<int32_t>(model.num_tokens());
  const int32_t max = max_id_;
  if (max < 0) return model_size;
  return (max >= model_size || model_size == 0) ? max + 1 : model_size;
}

void HfAddedVocabulary::add(const HfAddedToken& token, const BpeModel& model) {
  if (token.special && !token.content.empty() && special_contents_.count(token.content) == 0) {
    special_order_.push_back(token);
    special_contents_.insert(token.content);
  }
  if (token.content.empty()) return;
  auto existing = ids_.find(token.content);
  if (existing != ids_.end() && tokens_.at(existing->second) == token) return;
  const int32_t id = resolve_id(token.content, model);
  ids_[token.content] = id;
  tokens_[id] = token;
  max_id_ = std::max(max_id_, id);
  if (special_contents_.count(token.content) == 0) plain_order_.push_back(token);
}

bool HfAddedVocabulary::mark_special(const std::string& content, const BpeModel& model) {
  HfAddedToken token;
  auto it = ids_.find(content);
  if (it != ids_.end()) {
    token = tokens_.at(it->second);
  } else {
    if (model.token_to_id(content) < 0) return false;
    token.content = content;
    token.normalized = false;
  }
  token.special = true;
  add(token, model);
  return true;
}

void HfAddedVocabulary::build_matchers(const BpeModel& model, const Normalizer* normalizer) {
  raw_trie_ = TokenTrie();
  normalized_trie_ = TokenTrie();
  spelled_.clear();
  for (const auto* list : {&special_order_, &plain_order_}) {
    for (const HfAddedToken& token : *list) {
      const int32_t id = resolve_id(token.content, model);
      if (!token.normalized) {
        raw_trie_.add(token.content, id);
        continue;
      }
      std::string spelled = token.content;
      if (normalizer != nullptr) normalizer->normalize(&spelled);
      normalized_trie_.add(spelled, id);
      if (tokens_.at(id).normalized) spelled_[id] = std::move(spelled);
    }
  }
}

void HfAddedVocabulary::split(std::string_view text, bool normalized_tokens,
                              std::vector<AddedSplit>* out) const {
  const TokenTrie& trie = normalized_tokens ? normalized_trie_ : raw_trie_;
  const size_t n = text.size();
  size_t start_offset = 0;  // end of the last split
  size_t pos = 0;
  while (!trie.empty() && pos < n) {
    size_t len = 0;
    const int32_t id =
        trie.may_start_with(static_cast<uint8_t>(text[pos])) ? trie.longest_at(text, pos, &len) : -1;
    if (id < 0) {
      ++pos;
      continue;
    }
    size_t start = pos;
    size_t stop = pos + len;
    pos = stop;  // matches never overlap, even when a match below is discarded
    const HfAddedToken& token = tokens_.at(id);
    if (token.single_word) {
      bool ok = true;
      if (start > 0) {
        const size_t before = char_start_before(text, start);
        ok = !is_word_char_at(text, before, start - before);
      }
      if (ok && stop < n) {
        size_t next_len = 0;
        decode_utf8_char(text, stop, &next_len);
        ok = !is_word_char_at(text, stop, next_len);
      }
      if (!ok) continue;
    }
    if (token.lstrip) {
      size_t new_start = start;
      while (new_start > 0) {
        const size_t before = char_start_before(text, new_start);
        size_t char_len = 0;
        if (!is_white_space(decode_utf8_char(text, before, &char_len))) break;
        new_start = before;
      }
      // Whitespace an earlier match already took stays with it.
      start = std::max(new_start, start_offset);
    }
    if (token.rstrip) {
      while (stop < n) {
        size_t char_len = 0;
        if (!is_white_space(decode_utf8_char(text, stop, &char_len))) break;
        stop += char_len;
      }
    }
    if (start_offset < start) out->push_back({start_offset, start, -1});
    out->push_back({start, stop, id});
    start_offset = stop;
  }
  if (start_offset < n) out->push_back({start_offset, n, -1});
}

const std::string* HfAddedVocabulary::text_of(int32_t id) const {
  auto spelled = spelled_.find(id);
  if (spelled != spelled_.end()) return &spelled->second;
  auto it = tokens_.find(id);
  return it == tokens_.end() ? nullptr : &it->second.content;
}

int32_t HfAddedVocabulary::id_of(const std::string& content) const {
  auto it = ids_.find(content);
  return it == ids_.end() ? -1 : it->second;
}

const HfAddedToken* HfAddedVocabulary::token_of(int32_t id) const {
  auto it = tokens_.find(id);
  return it == tokens_.end() ? nullptr : &it->second;
}

}  // namespace llmcore
