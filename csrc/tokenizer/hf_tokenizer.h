// Tokenizer for checkpoints with a Hugging Face tokenizer.json (Llama-3, Qwen2, GPT-2, Mistral,
// sentencepiece models converted by transformers, ...): the BPE model with its normalizer,
// pre-tokenizer, added tokens, post-processor and decoder, encoding and decoding the way the
// `tokenizers` library does.
//
// encode(): input split at added tokens found in the raw text -> each other stretch normalized
// -> split at added tokens found in the normalized text -> pre-tokenized into pieces -> each piece
// through BPE -> with add_special_tokens, the post-processor's special tokens around the ids.
// decode(): ids -> token strings (special ones dropped when asked) -> decoder chain.
//
// All methods are const; the BPE cache is the only shared mutable state and is locked, so the
// engine thread and Python may call them concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "tokenizer/hf_added_vocabulary.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_config.h"

namespace llmcore {

class BpeModel;
class Decoder;
class Normalizer;
class PreTokenizer;

class HfTokenizer final : public Tokenizer {
 public:
  // json_text: the content of a tokenizer.json; origin names it in errors. config: the
  // checkpoint's tokenizer_config.json, if any, for bos_token / eos_token and the named special
  // tokens (made special as transformers does). Encoding follows the file's post-processor, not
  // add_bos_token / add_eos_token, as tokenizers and transformers' fast tokenizers do. Throws ValueError for malformed files and for components that are not supported,
  // naming the component and its type.
  HfTokenizer(const std::string& json_text, const std::string& origin,
              const std::optional<TokenizerConfig>& config);
  ~HfTokenizer() override;

  // Reads path (a tokenizer.json file).
  static std::unique_ptr<HfTokenizer> from_file(const std::string& path,
                                                const std::optional<TokenizerConfig>& config);

  // Throws ValueError when `text` is not valid UTF-8.
  std::vector<int32_t> encode(const std::string& text, bool add_special_tokens) const override;
  // Throws ValueError for an id outside the vocabulary.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override;
  std::string id_to_token(int32_t id) const override;
  int32_t token_to_id(const std::string& token) const override;
  int vocab_size() const override { return vocab_size_; }
  int32_t bos_token_id() const override { return bos_id_; }
  int32_t eos_token_id() const override { return eos_id_; }
  bool is_special(int32_t id) const override;

 private:
  // Reads TemplateProcessing (also inside Sequence) into template_prefix_ / template_suffix_.
  void parse_post_processor(const nlohmann::json& j, const std::string& origin);
  // Appends the ids of one stretch of input text that holds no raw added token.
  void encode_text(std::string_view text, bool at_origin, std::vector<int32_t>* ids) const;
  // The string decode() starts from: the added token's content (its normalized spelling for a
  // normalized token) or the model's token.
  const std::string& token_string(int32_t id) const;
  void check_id(int32_t id) const;
  int32_t resolve_named_token(const std::optional<std::optional<std::string>>& field,
                              const char* name, const std::string& origin) const;

  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<Decoder> decoder_;
  HfAddedVocabulary added_;
  // What add_special_tokens puts around the sequence (TemplateProcessing "single").
  std::vector<int32_t> template_prefix_;
  std::vector<int32_t> template_suffix_;
  int vocab_size_ = 0;
  std::vector<uint8_t> special_;  // [vocab_size_] 1: dropped by decode(skip_special_tokens)
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
};

}  // namespace llmcore
