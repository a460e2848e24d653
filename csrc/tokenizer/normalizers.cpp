#include "tokenizer/normalizers.h"

#include <utility>
#include <vector>

#include "tokenizer/hf_json.h"
#include "tokenizer/hf_regex.h"
#include "tokenizer/unicode_chars.h"
#include "tokenizer/unicode_normalization.h"

namespace llmcore {

namespace {

using hf_json::json;

class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(NormalizationForm form) : form_(form) {}
  void normalize(std::string* text) const override { *text = normalize_unicode(*text, form_); }

 private:
  NormalizationForm form_;
};

class LowercaseNormalizer final : public Normalizer {
 public:
  void normalize(std::string* text) const override { *text = to_lowercase(*text); }
};

// Strips White_Space characters (Rust's char::is_whitespace) from either end.
class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string* text) const override {
    const std::string_view s = *text;
    size_t begin = 0;
    size_t end = s.size();
    if (left_) {
      while (begin < end) {
        size_t len = 0;
        if (!is_white_space(decode_utf8_char(s, begin, &len))) break;
        begin += len;
      }
    }
    if (right_) {
      while (end > begin) {
        size_t start = end - 1;
        while (start > begin && (static_cast<uint8_t>(s[start]) & 0xC0) == 0x80) --start;
        size_t len = 0;
        if (!is_white_space(decode_utf8_char(s, start, &len))) break;
        end = start;
      }
    }
    if (begin != 0 || end != s.size()) *text = std::string(s.substr(begin, end - begin));
  }

 private:
  bool left_;
  bool right_;
};

// Prepends a string to non-empty text (sentencepiece's dummy prefix "▁" in converted Llama).
class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prepend) : prepend_(std::move(prepend)) {}
  void normalize(std::string* text) const override {
    if (!text->empty()) text->insert(0, prepend_);
  }

 private:
  std::string prepend_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(TextPattern pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void normalize(std::string* text) const override {
    std::string out;
    size_t copied = 0;
    bool matched = false;
    pattern_.for_each_match(*text, [&](size_t start, size_t end) {
      out.append(*text, copied, start - copied);
      out += content_;
      copied = end;
      matched = true;
    });
    if (!matched) return;
    out.append(*text, copied, std::string::npos);
    *text = std::move(out);
  }

 private:
  TextPattern pattern_;
  std::string content_;
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  void normalize(std::string* text) const override {
    for (const auto& step : steps_) step->normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

}  // namespace

std::unique_ptr<Normalizer> parse_normalizer(const json& j, const std::string& origin) {
  if (j.is_null()) return nullptr;
  const std::string type = hf_json::component_type(j, origin);
  const std::string where = origin + " (" + type + ")";
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(NormalizationForm::kNFC);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(NormalizationForm::kNFD);
  if (type == "NFKC") return std::make_unique<UnicodeNormalizer>(NormalizationForm::kNFKC);
  if (type == "NFKD") return std::make_unique<UnicodeNormalizer>(NormalizationForm::kNFKD);
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "Strip") {
    return std::make_unique<StripNormalizer>(hf_json::get_bool_or(j, "strip_left", true, where),
                                             hf_json::get_bool_or(j, "strip_right", true, where));
  }
  if (type == "Prepend") {
    return std::make_unique<PrependNormalizer>(hf_json::get_string(j, "prepend", where));
  }
  if (type == "Replace") {
    return std::make_unique<ReplaceNormalizer>(
        TextPattern::parse(hf_json::require(j, "pattern", where), where + " pattern"),
        hf_json::get_string(j, "content", where));
  }
  if (type == "Sequence") {
    const json& list = hf_json::require(j, "normalizers", where);
    LLMCORE_CHECK_ARG(list.is_array(), where, ": \"normalizers\" must be a list, got ", list.dump());
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (size_t i = 0; i < list.size(); ++i) {
      auto step = parse_normalizer(list[i], origin + ".normalizers[" + std::to_string(i) + "]");
      if (step) steps.push_back(std::move(step));
    }
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  throw_value_error(origin, ": normalizer type \"", type,
                    "\" is not supported (supported: NFC, NFD, NFKC, NFKD, Lowercase, Strip, "
                    "Prepend, Replace, Sequence)");
}

}  // namespace llmcore
