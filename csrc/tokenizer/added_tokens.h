// Added tokens (tokenizer_config.json's added_tokens_decoder and the named special tokens) are
// found in encode() input before the model's own tokenizer sees it, as Hugging Face's
// tokenizers do: "<s>[INST] hi" encodes "<s>" as its token, not as the text "<", "s", ">".
#pragma once

#include <array>
#include <cstdint>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer_config.h"

namespace llmcore {

// A piece of encode() input: text for the model's tokenizer, or one added token.
struct TextSegment {
  std::string_view text;  // empty for a token segment; views the input of split()
  int32_t token_id = -1;  // >= 0: an added token
};

class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  explicit AddedTokenMatcher(std::vector<AddedToken> tokens);

  bool empty() const { return tokens_.empty(); }

  // Splits `text` at added tokens, taking the leftmost match and, among matches starting there,
  // the longest. lstrip / rstrip tokens swallow ASCII whitespace beside them; single_word tokens
  // only match with a space or the text end on both sides. Empty text segments are left out.
  std::vector<TextSegment> split(std::string_view text) const;

 private:
  // Index into tokens_ of the longest token matching at text[pos], or -1.
  int find_at(std::string_view text, size_t pos) const;

  std::vector<AddedToken> tokens_;
  std::array<std::vector<int>, 256> by_first_byte_;  // indices into tokens_, longest first
};

}  // namespace llmcore
