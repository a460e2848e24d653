// Tokenizer: text <-> token ids, loaded from a checkpoint directory. tokenizer.model
// (sentencepiece) is implemented here; tokenizer.json (HF BPE) plugs in behind the same
// interface. BOS/EOS handling follows tokenizer_config.json (add_bos_token, add_eos_token,
// bos_token, eos_token) as HF's slow Llama tokenizer does.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace llmcore {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // add_special_tokens adds BOS/EOS as tokenizer_config.json says.
  virtual std::vector<int32_t> encode(const std::string& text, bool add_special_tokens) const = 0;
  // Invalid UTF-8 (incomplete byte-fallback sequences) decodes to U+FFFD.
  virtual std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const = 0;
  // The vocabulary piece of a token ("▁Hello", "<0x0A>", "<s>").
  virtual std::string id_to_token(int32_t id) const = 0;
  // -1 when the token is not in the vocabulary.
  virtual int32_t token_to_id(const std::string& token) const = 0;
  virtual int vocab_size() const = 0;
  virtual int32_t bos_token_id() const = 0;  // -1 if none
  virtual int32_t eos_token_id() const = 0;  // -1 if none
  virtual bool is_special(int32_t id) const = 0;  // control tokens (bos, eos, unk, pad, added special)
};

// Loads the tokenizer of a checkpoint directory. Throws ValueError when none is found.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir);

}  // namespace llmcore
