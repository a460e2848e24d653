// Tokenizer for checkpoints with a sentencepiece tokenizer.model (Llama, Mistral, Gemma, ...).
// Encoding matches Hugging Face's slow LlamaTokenizer in legacy mode: input text is split at
// added tokens, each text segment goes through sentencepiece (which adds its dummy-prefix "▁"),
// and BOS/EOS follow tokenizer_config.json. Without added tokens this is exactly
// sentencepiece's Encode plus BOS/EOS.
//
// All methods are const and touch only state fixed at construction, so the engine thread and
// Python may call them concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/added_tokens.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_config.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace llmcore {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  // model_path: a sentencepiece model file. config: the checkpoint's tokenizer_config.json, if
  // any; without one BOS/EOS are the model's bos_id() / eos_id(). Throws ValueError for an
  // unreadable model or a config naming a BOS/EOS token the vocabulary does not have.
  SentencePieceTokenizer(const std::string& model_path,
                         const std::optional<TokenizerConfig>& config);
  ~SentencePieceTokenizer() override;

  std::vector<int32_t> encode(const std::string& text, bool add_special_tokens) const override;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override;
  std::string id_to_token(int32_t id) const override;
  int32_t token_to_id(const std::string& token) const override;
  int vocab_size() const override { return vocab_size_; }
  int32_t bos_token_id() const override { return bos_id_; }
  int32_t eos_token_id() const override { return eos_id_; }
  bool is_special(int32_t id) const override;

 private:
  // How decode() turns an id into text.
  enum class Unit : uint8_t {
    kPiece,   // a sentencepiece piece: decoded in runs, so spaces and byte pieces join up
    kInsert,  // a control / unknown / added token: its string goes in verbatim
    kNone,    // an id in a gap above the model's pieces that no added token fills
  };

  void check_id(int32_t id) const;
  // Marks `content` (a token named in the config) special; -1 when it is not in the vocabulary.
  int32_t mark_named_special(const std::string& content, std::vector<AddedToken>* matchable);

  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  int num_pieces_ = 0;  // ids [0, num_pieces_) are sentencepiece pieces
  int vocab_size_ = 0;  // num_pieces_ plus added tokens above them
  bool add_bos_ = true;
  bool add_eos_ = false;
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  std::vector<Unit> unit_;        // [vocab_size_]
  std::vector<uint8_t> special_;  // [vocab_size_] 1: dropped by decode(skip_special_tokens)
  std::unordered_map<int32_t, std::string> inserted_text_;  // kInsert id -> its text
  std::unordered_map<std::string, int32_t> added_ids_;      // added token content -> id
  AddedTokenMatcher matcher_;
};

}  // namespace llmcore
