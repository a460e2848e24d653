// tokenizer.json normalizers: rewrite each stretch of input text between added tokens before
// pre-tokenization. Supported: NFC, NFD, NFKC, NFKD, Lowercase, Strip, Prepend, Replace (String
// or Regex pattern) and Sequence; any other type is refused at load with a ValueError naming it.
#pragma once

#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>

namespace llmcore {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // text: valid UTF-8, rewritten in place (stays valid UTF-8).
  virtual void normalize(std::string* text) const = 0;
};

// The normalizer described by `j` (tokenizer.json's "normalizer"); nullptr for null. origin
// names the component in errors.
std::unique_ptr<Normalizer> parse_normalizer(const nlohmann::json& j, const std::string& origin);

}  // namespace llmcore
