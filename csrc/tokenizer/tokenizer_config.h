// tokenizer_config.json as Hugging Face writes it: which special tokens a checkpoint has and
// whether encode() adds BOS/EOS. Shared by every Tokenizer implementation.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace llmcore {

// One entry of added_tokens_decoder: a token matched whole in input text before the model's
// own tokenization runs, and decoded as its content.
struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;      // dropped by decode(skip_special_tokens = true)
  bool lstrip = false;       // eats whitespace on its left
  bool rstrip = false;       // eats whitespace on its right
  bool single_word = false;  // matches only between spaces / text ends
};

struct TokenizerConfig {
  bool add_bos_token = true;
  bool add_eos_token = false;
  // Outer optional: the key is present; inner: its value is not null. An absent key leaves the
  // choice to the model file; null means "no such token".
  std::optional<std::optional<std::string>> bos_token;
  std::optional<std::optional<std::string>> eos_token;
  std::optional<std::optional<std::string>> unk_token;
  std::optional<std::optional<std::string>> pad_token;
  std::vector<std::string> additional_special_tokens;
  std::vector<AddedToken> added_tokens;  // ordered by id
};

// Reads dir/tokenizer_config.json; std::nullopt when the file does not exist. Throws
// ValueError naming the file and the field when it exists but is malformed.
std::optional<TokenizerConfig> read_tokenizer_config(const std::string& dir);

// Parses the JSON text of a tokenizer_config.json; `origin` names it in error messages.
TokenizerConfig parse_tokenizer_config(const std::string& json_text, const std::string& origin);

}  // namespace llmcore
