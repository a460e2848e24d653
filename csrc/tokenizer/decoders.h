// tokenizer.json decoders: turn the token strings of decoded ids back into text. Supported:
// ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace and Sequence; any other type is
// refused at load with a ValueError naming it. Semantics follow Hugging Face's decode_chain:
// each decoder maps the list of token strings to a new list, and the result is concatenated.
#pragma once

#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace llmcore {

class Decoder {
 public:
  virtual ~Decoder() = default;
  // tokens: valid UTF-8 strings, rewritten in place (they stay valid UTF-8).
  virtual void decode_chain(std::vector<std::string>* tokens) const = 0;
};

// The decoder described by `j` (tokenizer.json's "decoder"); nullptr for null.
std::unique_ptr<Decoder> parse_decoder(const nlohmann::json& j, const std::string& origin);

}  // namespace llmcore
