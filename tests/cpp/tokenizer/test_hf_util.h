// Test support for the tokenizer.json tests: small tokenizer.json documents written by hand,
// and GPT-2's byte-level alphabet computed here independently of the code under test.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/hf_tokenizer.h"
#include "tokenizer/tokenizer_config.h"

namespace llmcore::test_util {

using nlohmann::json;

// GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others (0-32, 127-160,
// 173) take U+0100, U+0101, ... in byte order. Returns the UTF-8 of the character for `byte`.
inline std::string byte_char(unsigned char byte) {
  unsigned cp = byte;
  const bool printable = (byte >= 0x21 && byte <= 0x7E) || (byte >= 0xA1 && byte <= 0xAC) || byte >= 0xAE;
  if (!printable) {
    unsigned n = 0;
    for (unsigned b = 0; b < byte; ++b) {
      const bool p = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      if (!p) ++n;
    }
    cp = 256 + n;
  }
  std::string out;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return out;
}

// The byte-level spelling of raw text ("a b" -> "aĠb").
inline std::string byte_level(const std::string& raw) {
  std::string out;
  for (unsigned char c : raw) out += byte_char(c);
  return out;
}

// A BPE model object: `tokens` get ids 0, 1, ... in order; merges as written in the file.
inline json bpe_model_json(const std::vector<std::string>& tokens, const json& merges) {
  json vocab = json::object();
  for (size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = static_cast<int>(i);
  return json{{"type", "BPE"},          {"dropout", nullptr},      {"unk_token", nullptr},
              {"continuing_subword_prefix", nullptr},               {"end_of_word_suffix", nullptr},
              {"fuse_unk", false},      {"byte_fallback", false},  {"ignore_merges", false},
              {"vocab", vocab},         {"merges", merges}};
}

// Merges written as ["left", "right"] pairs, in rank order.
inline json bpe_model(const std::vector<std::string>& tokens,
                      const std::vector<std::pair<std::string, std::string>>& merges) {
  json list = json::array();
  for (const auto& [left, right] : merges) list.push_back(json::array({left, right}));
  return bpe_model_json(tokens, list);
}

// The 256 byte-level characters (ids 0..255 in byte order) followed by `extra` tokens.
inline std::vector<std::string> byte_level_tokens(const std::vector<std::string>& extra = {}) {
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.push_back(byte_char(static_cast<unsigned char>(b)));
  tokens.insert(tokens.end(), extra.begin(), extra.end());
  return tokens;
}

inline json tokenizer_json(const json& model) {
  return json{{"version", "1.0"},       {"truncation", nullptr},  {"padding", nullptr},
              {"added_tokens", json::array()},                    {"normalizer", nullptr},
              {"pre_tokenizer", nullptr}, {"post_processor", nullptr}, {"decoder", nullptr},
              {"model", model}};
}

inline json added_token(int id, const std::string& content, bool special, bool normalized = false) {
  return json{{"id", id},          {"content", content}, {"single_word", false},
              {"lstrip", false},   {"rstrip", false},    {"normalized", normalized},
              {"special", special}};
}

inline std::unique_ptr<HfTokenizer> make_tokenizer(const json& j,
                                                   const std::optional<TokenizerConfig>& config = std::nullopt) {
  return std::make_unique<HfTokenizer>(j.dump(), "test tokenizer.json", config);
}

}  // namespace llmcore::test_util
