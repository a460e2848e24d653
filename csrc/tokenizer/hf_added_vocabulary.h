// The added tokens of tokenizer.json ("added_tokens": special tokens like <|eot_id|> and user
// additions), with Hugging Face's rules: ids assigned as AddedVocabulary::add_tokens does
// (a token already in the model keeps the model's id, a new one gets the next id past the
// model), and splitting of input text at them before the model runs, leftmost-longest, with
// single_word / lstrip / rstrip. Tokens with normalized=false are found in the raw input; those
// with normalized=true in the normalized text, spelled as the normalizer rewrites them.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace llmcore {

class BpeModel;
class Normalizer;

struct HfAddedToken {
  std::string content;
  bool single_word = false;  // only matches with no word character (\w) right beside it
  bool lstrip = false;       // also takes the whitespace on its left
  bool rstrip = false;       // also takes the whitespace on its right
  bool normalized = true;    // matched in normalized text (else in the raw input)
  bool special = false;      // dropped by decode(skip_special_tokens = true)

  bool operator==(const HfAddedToken& o) const {
    return content == o.content && single_word == o.single_word && lstrip == o.lstrip &&
           rstrip == o.rstrip && normalized == o.normalized && special == o.special;
  }
};

// Byte trie answering "which key is the longest prefix of s[pos..]".
class TokenTrie {
 public:
  TokenTrie();
  // Keeps the first value given for a key.
  void add(std::string_view key, int32_t value);
  // Value of the longest key s[pos..] starts with (its length in *len), or -1.
  int32_t longest_at(std::string_view s, size_t pos, size_t* len) const;
  bool may_start_with(uint8_t byte) const { return first_byte_[byte]; }
  bool empty() const { return nodes_.size() == 1; }

 private:
  struct Node {
    int32_t value = -1;
    std::vector<std::pair<uint8_t, int32_t>> children;  // sorted by byte
  };
  std::vector<Node> nodes_;  // nodes_[0] is the root
  std::array<bool, 256> first_byte_{};
};

// A stretch of text [begin, end): an added token when token >= 0, else text for the model.
struct AddedSplit {
  size_t begin = 0;
  size_t end = 0;
  int32_t token = -1;
};

class HfAddedVocabulary {
 public:
  // Adds one token (Hugging Face's add_tokens / add_special_tokens, one token at a time in
  // file order, which decides the ids of tokens the model does not have).
  void add(const HfAddedToken& token, const BpeModel& model);
  // Makes `content` a special token the way transformers does for the tokens tokenizer_config.json
  // names (bos_token, eos_token, ...): an added token keeps its options and becomes special; a
  // token only the model has is added as special and unnormalized. False when neither has it.
  bool mark_special(const std::string& content, const BpeModel& model);
  // Builds the matchers once every token is added; normalized tokens are matched as
  // `normalizer` spells them (null: as written).
  void build_matchers(const BpeModel& model, const Normalizer* normalizer);

  // Splits `text` at matches of the raw (normalized = false) or the normalized tokens. The
  // splits cover the text in order; empty text splits are left out.
  void split(std::string_view text, bool normalized_tokens, std::vector<AddedSplit>* out) const;

  // -1 when `content` is not an added token.
  int32_t id_of(const std::string& content) const;
  // nullptr when `id` is not an added token.
  const HfAddedToken* token_of(int32_t id) const;
  // What decode() and id_to_token() show for an added token (nullptr when `id` is none): the
  // content, or for a normalized token its normalized spelling, as Hugging Face caches it.
  const std::string* text_of(int32_t id) const;
  bool is_special_content(const std::string& content) const {
    return special_contents_.count(content) != 0;
  }
  int32_t max_id() const { return max_id_; }  // -1 when empty

 private:
  int32_t resolve_id(const std::string& content, const BpeModel& model) const;

  std::unordered_map<std::string, int32_t> ids_;        // content -> id
  std::unordered_map<int32_t, HfAddedToken> tokens_;    // id -> token
  std::vector<HfAddedToken> special_order_;             // special tokens in the order added
  std::vector<HfAddedToken> plain_order_;               // other tokens in the order added
  std::unordered_set<std::string> special_contents_;
  std::unordered_map<int32_t, std::string> spelled_;  // normalized token id -> normalized content
  int32_t max_id_ = -1;
  TokenTrie raw_trie_;         // normalized = false tokens -> id
  TokenTrie normalized_trie_;  // normalized = true tokens, normalized -> id
};

}  // namespace llmcore
