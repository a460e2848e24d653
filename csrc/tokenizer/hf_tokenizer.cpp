#include "tokenizer/hf_tokenizer.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "tokenizer/bpe.h"
#include "tokenizer/decoders.h"
#include "tokenizer/hf_json.h"
#include "tokenizer/normalizers.h"
#include "tokenizer/pre_tokenizers.h"
#include "tokenizer/utf8.h"

namespace llmcore {

namespace {

using hf_json::json;

HfAddedToken parse_added_token(const json& j, const std::string& origin) {
  LLMCORE_CHECK_ARG(j.is_object(), origin, " must be an object, got ", j.dump());
  HfAddedToken token;
  token.content = hf_json::get_string(j, "content", origin);
  token.special = hf_json::get_bool_or(j, "special", false, origin);
  token.single_word = hf_json::get_bool_or(j, "single_word", false, origin);
  token.lstrip = hf_json::get_bool_or(j, "lstrip", false, origin);
  token.rstrip = hf_json::get_bool_or(j, "rstrip", false, origin);
  // AddedToken::from(content, special) makes special tokens unnormalized by default.
  token.normalized = hf_json::get_bool_or(j, "normalized", !token.special, origin);
  return token;
}

}  // namespace

HfTokenizer::HfTokenizer(const std::string& json_text, const std::string& origin,
                         const std::optional<TokenizerConfig>& config) {
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::exception& e) {
    throw_value_error(origin, " is not valid JSON: ", e.what());
  }
  LLMCORE_CHECK_ARG(root.is_object(), origin, " must hold a JSON object, got ", root.type_name());
  const std::string version = hf_json::get_string_or(root, "version", "1.0", origin);
  LLMCORE_CHECK_ARG(version == "1.0", origin, ": version \"", version, "\" is not supported (1.0)");

  const json& model = hf_json::require(root, "model", origin);
  LLMCORE_CHECK_ARG(model.is_object(), origin, ": model must be an object");
  // Files from before "type" was written identify BPE by its merges.
  const std::string model_type = model.contains("type")
                                     ? hf_json::get_string(model, "type", origin + " model")
                                     : (model.contains("merges") ? "BPE" : "(no type)");
  LLMCORE_CHECK_ARG(model_type == "BPE", origin, " model: model type \"", model_type,
                    "\" is not supported (supported: BPE)");
  model_ = std::make_unique<BpeModel>(model, origin + " model (BPE)");

  auto component = [&](const char* key) -> const json& {
    static const json null_json;
    auto it = root.find(key);
    return it == root.end() ? null_json : *it;
  };
  normalizer_ = parse_normalizer(component("normalizer"), origin + " normalizer");
  pre_tokenizer_ = parse_pre_tokenizer(component("pre_tokenizer"), origin + " pre_tokenizer");
  decoder_ = parse_decoder(component("decoder"), origin + " decoder");

  const json& added = component("added_tokens");
  if (!added.is_null()) {
    LLMCORE_CHECK_ARG(added.is_array(), origin, ": added_tokens must be a list");
    for (size_t i = 0; i < added.size(); ++i) {
      added_.add(parse_added_token(added[i], origin + " added_tokens[" + std::to_string(i) + "]"),
                 *model_);
    }
  }
  if (config) {
    // transformers registers the tokens tokenizer_config.json names as special tokens, so they
    // are matched whole in input text and dropped by skip_special_tokens. A named token the
    // vocabulary lacks is not invented (transformers would append it past the model's
    // embeddings); bos / eos must exist (checked below).
    std::vector<std::string> named;
    for (const auto* field : {&config->bos_token, &config->eos_token, &config->unk_token, &config->pad_token}) {
      if (field->has_value() && (*field)->has_value()) named.push_back(***field);
    }
    named.insert(named.end(), config->additional_special_tokens.begin(),
                 config->additional_special_tokens.end());
    for (const std::string& content : named) added_.mark_special(content, *model_);
  }
  added_.build_matchers(*model_, normalizer_.get());

  vocab_size_ = std::max(model_->vocab_size(), added_.max_id() + 1);
  special_.assign(vocab_size_, 0);
  for (int32_t id = 0; id < vocab_size_; ++id) {
    // Hugging Face skips by the shown string, so a normalized special token whose spelling
    // changed is not skipped.
    const std::string* added_text = added_.text_of(id);
    const std::string* text = added_text != nullptr ? added_text : model_->id_to_token(id);
    if (text != nullptr && added_.is_special_content(*text)) special_[id] = 1;
  }

  parse_post_processor(component("post_processor"), origin + " post_processor");

  if (config) {
    bos_id_ = resolve_named_token(config->bos_token, "bos_token", origin);
    eos_id_ = resolve_named_token(config->eos_token, "eos_token", origin);
  }
}

HfTokenizer::~HfTokenizer() = default;

std::unique_ptr<HfTokenizer> HfTokenizer::from_file(const std::string& path,
                                                    const std::optional<TokenizerConfig>& config) {
  std::ifstream in(path, std::ios::binary);
  LLMCORE_CHECK_ARG(in.good(), "cannot read ", path);
  std::ostringstream text;
  text << in.rdbuf();
  return std::make_unique<HfTokenizer>(text.str(), path, config);
}

int32_t HfTokenizer::resolve_named_token(const std::optional<std::optional<std::string>>& field,
                                         const char* name, const std::string& origin) const {
  if (!field || !field->has_value()) return -1;
  const int32_t id = token_to_id(**field);
  LLMCORE_CHECK_ARG(id >= 0, "tokenizer_config.json ", name, " \"", **field,
                    "\" is not in the vocabulary of ", origin, " (", vocab_size_, " tokens)");
  return id;
}

void HfTokenizer::parse_post_processor(const json& j, const std::string& origin) {
  if (j.is_null()) return;
  const std::string type = hf_json::component_type(j, origin);
  const std::string where = origin + " (" + type + ")";
  if (type == "ByteLevel") return;  // only adjusts offsets, which encode() does not return
  if (type == "Sequence") {
    const json& list = hf_json::require(j, "processors", where);
    LLMCORE_CHECK_ARG(list.is_array(), where, ": \"processors\" must be a list");
    for (size_t i = 0; i < list.size(); ++i) {
      parse_post_processor(list[i], origin + ".processors[" + std::to_string(i) + "]");
    }
    return;
  }
  LLMCORE_CHECK_ARG(type == "TemplateProcessing", origin, ": post-processor type \"", type,
                    "\" is not supported (supported: TemplateProcessing, ByteLevel, Sequence)");
  const json& single = hf_json::require(j, "single", where);
  LLMCORE_CHECK_ARG(single.is_array(), where, ": \"single\" must be a list, got ", single.dump());
  const json& specials = hf_json::require(j, "special_tokens", where);
  std::vector<int32_t> prefix;
  std::vector<int32_t> suffix;
  bool seen_sequence = false;
  for (const json& item : single) {
    if (item.is_object() && item.contains("Sequence")) {
      const std::string id = hf_json::get_string(item["Sequence"], "id", where + " single");
      LLMCORE_CHECK_ARG(id == "A" && !seen_sequence, where,
                        ": \"single\" must hold the sequence $A exactly once, got ", single.dump());
      seen_sequence = true;
      continue;
    }
    LLMCORE_CHECK_ARG(item.is_object() && item.contains("SpecialToken"), where,
                      ": \"single\" items must be SpecialToken or Sequence, got ", item.dump());
    const std::string name = hf_json::get_string(item["SpecialToken"], "id", where + " single");
    LLMCORE_CHECK_ARG(specials.is_object() && specials.contains(name), where, ": special token \"",
                      name, "\" is used in \"single\" but not listed in special_tokens");
    const json& ids = hf_json::require(specials[name], "ids", where + " special_tokens." + name);
    LLMCORE_CHECK_ARG(ids.is_array(), where, ": special_tokens.", name, ".ids must be a list");
    for (const json& value : ids) {
      LLMCORE_CHECK_ARG(value.is_number_integer(), where, ": special_tokens.", name,
                        ".ids must hold token ids, got ", value.dump());
      const int32_t id = value.get<int32_t>();
      check_id(id);
      (seen_sequence ? suffix : prefix).push_back(id);
    }
  }
  LLMCORE_CHECK_ARG(seen_sequence, where, ": \"single\" must hold the sequence $A, got ",
                    single.dump());
  // A later processor wraps what the earlier ones produced.
  template_prefix_.insert(template_prefix_.begin(), prefix.begin(), prefix.end());
  template_suffix_.insert(template_suffix_.end(), suffix.begin(), suffix.end());
}

void HfTokenizer::check_id(int32_t id) const {
  LLMCORE_CHECK_ARG(id >= 0 && id < vocab_size_, "token id ", id,
                    " is out of range for vocab size ", vocab_size_);
  LLMCORE_CHECK_ARG(added_.token_of(id) != nullptr || model_->id_to_token(id) != nullptr,
                    "token id ", id, " is not in the vocabulary (vocab size ", vocab_size_,
                    "; no model or added token has this id)");
}

const std::string& HfTokenizer::token_string(int32_t id) const {
  const std::string* added_text = added_.text_of(id);
  return added_text != nullptr ? *added_text : *model_->id_to_token(id);
}

std::vector<int32_t> HfTokenizer::encode(const std::string& text, bool add_special_tokens) const {
  LLMCORE_CHECK_ARG(is_valid_utf8(text), "text to encode is not valid UTF-8 (", text.size(),
                    " bytes)");
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 8);
  if (add_special_tokens) ids = template_prefix_;
  std::vector<AddedSplit> splits;
  added_.split(text, /*normalized_tokens=*/false, &splits);
  for (const AddedSplit& split : splits) {
    if (split.token >= 0) {
      ids.push_back(split.token);
    } else {
      encode_text(std::string_view(text).substr(split.begin, split.end - split.begin),
                  split.begin == 0, &ids);
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), template_suffix_.begin(), template_suffix_.end());
  return ids;
}

void HfTokenizer::encode_text(std::string_view text, bool at_origin, std::vector<int32_t>* ids) const {
  std::string normalized(text);
  if (normalizer_) normalizer_->normalize(&normalized);
  if (normalized.empty()) return;
  std::vector<AddedSplit> splits;
  added_.split(normalized, /*normalized_tokens=*/true, &splits);
  PieceList list;
  PieceList scratch;
  for (const AddedSplit& split : splits) {
    if (split.token >= 0) {
      ids->push_back(split.token);
      continue;
    }
    list.text.assign(normalized, split.begin, split.end - split.begin);
    list.pieces.assign(1, TextPiece{0, list.text.size(), at_origin && split.begin == 0});
    if (pre_tokenizer_) pre_tokenizer_->pre_tokenize(&list, &scratch);
    for (const TextPiece& piece : list.pieces) model_->tokenize(list.view(piece), ids);
  }
}

std::string HfTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    check_id(id);
    if (skip_special_tokens && special_[id]) continue;
    tokens.push_back(token_string(id));
  }
  std::string text;
  if (decoder_) {
    decoder_->decode_chain(&tokens);
    for (const std::string& token : tokens) text += token;
  } else {
    // Without a decoder Hugging Face joins the tokens with spaces.
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0) text += ' ';
      text += tokens[i];
    }
  }
  return is_valid_utf8(text) ? text : replace_invalid_utf8(text);
}

std::string HfTokenizer::id_to_token(int32_t id) const {
  check_id(id);
  return token_string(id);
}

int32_t HfTokenizer::token_to_id(const std::string& token) const {
  const int32_t added = added_.id_of(token);
  return added >= 0 ? added : model_->token_to_id(token);
}

bool HfTokenizer::is_special(int32_t id) const {
  return id >= 0 && id < vocab_size_ && special_[id] != 0;
}

}  // namespace llmcore
