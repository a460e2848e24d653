#include "tokenizer/sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>

#include "core/error.h"
#include "tokenizer/utf8.h"

namespace llmcore {

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_path,
                                               const std::optional<TokenizerConfig>& config)
    : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  const auto status = sp_->Load(model_path);
  LLMCORE_CHECK_ARG(status.ok(), "cannot load sentencepiece model ", model_path, ": ",
                    status.ToString());
  num_pieces_ = sp_->GetPieceSize();

  vocab_size_ = num_pieces_;
  if (config) {
    for (const AddedToken& token : config->added_tokens)
      vocab_size_ = std::max(vocab_size_, token.id + 1);
  }
  unit_.assign(vocab_size_, Unit::kNone);
  special_.assign(vocab_size_, 0);
  for (int id = 0; id < num_pieces_; ++id) {
    if (sp_->IsControl(id) || sp_->IsUnknown(id)) {
      // sentencepiece decodes control ids to "" and unknown to " ⁇ "; shown as their piece
      // ("<s>", "<unk>") like Hugging Face does, or dropped when skipping special tokens.
      unit_[id] = Unit::kInsert;
      special_[id] = 1;
      inserted_text_[id] = sp_->IdToPiece(id);
    } else {
      unit_[id] = Unit::kPiece;
    }
  }

  bos_id_ = sp_->bos_id();
  eos_id_ = sp_->eos_id();
  if (!config) return;

  add_bos_ = config->add_bos_token;
  add_eos_ = config->add_eos_token;
  std::vector<AddedToken> matchable = config->added_tokens;
  for (const AddedToken& token : config->added_tokens) {
    unit_[token.id] = Unit::kInsert;
    // A control piece stays special even if the config says otherwise.
    if (token.special) special_[token.id] = 1;
    inserted_text_[token.id] = token.content;
    added_ids_[token.content] = token.id;
  }

  // Named special tokens are special whatever added_tokens_decoder says, and are matched in
  // input text like added tokens (Hugging Face adds them to its added-token trie).
  auto resolve = [&](const std::optional<std::optional<std::string>>& field, const char* name,
                     int32_t fallback, bool required) {
    if (!field) return fallback;
    if (!field->has_value()) return int32_t{-1};
    const int32_t id = mark_named_special(**field, &matchable);
    LLMCORE_CHECK_ARG(id >= 0 || !required, "tokenizer_config.json ", name, " \"", **field,
                      "\" is not in the vocabulary of ", model_path, " (", vocab_size_, " tokens)");
    return id;
  };
  bos_id_ = resolve(config->bos_token, "bos_token", bos_id_, true);
  eos_id_ = resolve(config->eos_token, "eos_token", eos_id_, true);
  resolve(config->unk_token, "unk_token", -1, false);
  resolve(config->pad_token, "pad_token", -1, false);
  for (const std::string& content : config->additional_special_tokens) {
    mark_named_special(content, &matchable);
  }
  matcher_ = AddedTokenMatcher(std::move(matchable));
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

int32_t SentencePieceTokenizer::mark_named_special(const std::string& content,
                                                   std::vector<AddedToken>* matchable) {
  const int32_t id = token_to_id(content);
  if (id < 0) return -1;
  special_[id] = 1;
  unit_[id] = Unit::kInsert;
  inserted_text_[id] = content;
  const bool listed = std::any_of(matchable->begin(), matchable->end(),
                                  [&](const AddedToken& t) { return t.content == content; });
  if (!listed) {
    AddedToken token;
    token.id = id;
    token.content = content;
    token.special = true;
    matchable->push_back(std::move(token));
  }
  return id;
}

void SentencePieceTokenizer::check_id(int32_t id) const {
  LLMCORE_CHECK_ARG(id >= 0 && id < vocab_size_, "token id ", id,
                    " is out of range for vocab size ", vocab_size_);
  LLMCORE_CHECK_ARG(unit_[id] != Unit::kNone, "token id ", id,
                    " is not in the vocabulary (vocab size ", vocab_size_, ", ", num_pieces_,
                    " sentencepiece pieces and no added token with this id)");
}

std::vector<int32_t> SentencePieceTokenizer::encode(const std::string& text,
                                                    bool add_special_tokens) const {
  std::vector<int32_t> ids;
  if (add_special_tokens && add_bos_ && bos_id_ >= 0) ids.push_back(bos_id_);
  std::vector<int> piece_ids;
  for (const TextSegment& segment : matcher_.split(text)) {
    if (segment.token_id >= 0) {
      ids.push_back(segment.token_id);
      continue;
    }
    const auto status = sp_->Encode(segment.text, &piece_ids);
    if (!status.ok()) throw_runtime_error("sentencepiece Encode failed: ", status.ToString());
    ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
  }
  if (add_special_tokens && add_eos_ && eos_id_ >= 0) ids.push_back(eos_id_);
  return ids;
}

std::string SentencePieceTokenizer::decode(const std::vector<int32_t>& ids,
                                           bool skip_special_tokens) const {
  std::string text;
  std::vector<int> run;  // consecutive kPiece ids, decoded together
  std::string run_text;
  auto flush_run = [&]() {
    if (run.empty()) return;
    const auto status = sp_->Decode(run, &run_text);
    if (!status.ok()) throw_runtime_error("sentencepiece Decode failed: ", status.ToString());
    text += run_text;
    run.clear();
  };
  for (int32_t id : ids) {
    check_id(id);
    if (unit_[id] == Unit::kPiece) {
      run.push_back(id);
      continue;
    }
    if (skip_special_tokens && special_[id]) continue;
    flush_run();
    text += inserted_text_.at(id);
  }
  flush_run();
  // sentencepiece already turns each byte of an incomplete byte-fallback sequence into U+FFFD;
  // this keeps the promise of valid UTF-8 whatever the model's pieces hold.
  return is_valid_utf8(text) ? text : replace_invalid_utf8(text);
}

std::string SentencePieceTokenizer::id_to_token(int32_t id) const {
  check_id(id);
  auto inserted = inserted_text_.find(id);
  return inserted != inserted_text_.end() ? inserted->second : sp_->IdToPiece(id);
}

int32_t SentencePieceTokenizer::token_to_id(const std::string& token) const {
  auto added = added_ids_.find(token);
  if (added != added_ids_.end()) return added->second;
  const int id = sp_->PieceToId(token);
  // PieceToId answers unk_id() for pieces it does not know.
  if (id < 0 || (sp_->IsUnknown(id) && sp_->IdToPiece(id) != token)) return -1;
  return id;
}

bool SentencePieceTokenizer::is_special(int32_t id) const {
  return id >= 0 && id < vocab_size_ && special_[id] != 0;
}

}  // namespace llmcore
