#include "tokenizer/pre_tokenizers.h"

#include <utility>

#include "tokenizer/byte_level.h"
#include "tokenizer/hf_json.h"
#include "tokenizer/hf_regex.h"
#include "tokenizer/unicode_chars.h"

namespace llmcore {

namespace {

using hf_json::json;

// GPT-2's pre-tokenization regex, which ByteLevel applies when use_regex is true.
constexpr const char* kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

// Matches of for_each (a callable taking an on_match(start, end) callback) and the gaps between
// them as spans covering [0, size); invert swaps which ones count as matches.
template <typename ForEach>
void collect_spans(size_t size, bool invert, ForEach&& for_each, std::vector<Span>* spans) {
  spans->clear();
  size_t previous = 0;
  for_each([&](size_t start, size_t end) {
    if (previous != start) spans->push_back({previous, start, invert});
    spans->push_back({start, end, !invert});
    previous = end;
  });
  if (previous != size) spans->push_back({previous, size, invert});
}

// Each character satisfying `predicate` is a match of its own (Hugging Face's char patterns).
template <typename Predicate>
auto char_matches(std::string_view s, Predicate predicate) {
  return [s, predicate](auto&& on_match) {
    size_t pos = 0;
    while (pos < s.size()) {
      size_t len = 0;
      const uint32_t cp = decode_utf8_char(s, pos, &len);
      if (predicate(cp)) on_match(pos, pos + len);
      pos += len;
    }
  };
}

// Appends the kept spans of a piece to `out` as pieces of the same text.
void push_spans(const TextPiece& piece, const std::vector<Span>& kept, std::vector<TextPiece>* out) {
  for (const Span& span : kept) {
    out->push_back({piece.begin + span.begin, piece.begin + span.end,
                    piece.at_origin && span.begin == 0});
  }
}

SplitBehavior parse_behavior(const json& j, const std::string& origin) {
  const std::string name = hf_json::get_string(j, "behavior", origin);
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  throw_value_error(origin, ": behavior \"", name,
                    "\" is not one of Removed, Isolated, MergedWithPrevious, MergedWithNext, "
                    "Contiguous");
}

// Splits every piece at the matches of `pattern` (anything with for_each_match(s, on_match)),
// keeping the parts as `behavior` says; the result replaces list's pieces.
template <typename Pattern>
void split_pieces(PieceList* list, PieceList* scratch, bool invert, SplitBehavior behavior,
                  const Pattern& pattern) {
  std::vector<TextPiece>& out = scratch->pieces;
  out.clear();
  std::vector<Span> spans;
  std::vector<Span> kept;
  for (const TextPiece& piece : list->pieces) {
    const std::string_view s = list->view(piece);
    collect_spans(s.size(), invert, [&](auto&& on_match) { pattern.for_each_match(s, on_match); },
                  &spans);
    kept.clear();
    apply_split_behavior(spans, behavior, &kept);
    push_spans(piece, kept, &out);
  }
  list->pieces.swap(out);
}

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(TextPattern pattern, SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}

  void pre_tokenize(PieceList* list, PieceList* scratch) const override {
    split_pieces(list, scratch, invert_, behavior_, pattern_);
  }

 private:
  TextPattern pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

// Splits on single characters chosen by a predicate (Digits, WhitespaceSplit).
template <typename Predicate>
class CharSplitPreTokenizer final : public PreTokenizer {
 public:
  CharSplitPreTokenizer(Predicate predicate, SplitBehavior behavior)
      : predicate_(predicate), behavior_(behavior) {}

  void pre_tokenize(PieceList* list, PieceList* scratch) const override {
    std::vector<TextPiece>& out = scratch->pieces;
    out.clear();
    std::vector<Span> spans;
    std::vector<Span> kept;
    for (const TextPiece& piece : list->pieces) {
      const std::string_view s = list->view(piece);
      collect_spans(s.size(), false, char_matches(s, predicate_), &spans);
      kept.clear();
      apply_split_behavior(spans, behavior_, &kept);
      push_spans(piece, kept, &out);
    }
    list->pieces.swap(out);
  }

 private:
  Predicate predicate_;
  SplitBehavior behavior_;
};

template <typename Predicate>
std::unique_ptr<PreTokenizer> make_char_split(Predicate predicate, SplitBehavior behavior) {
  return std::make_unique<CharSplitPreTokenizer<Predicate>>(predicate, behavior);
}

// Digits: Rust's char::is_numeric (general categories Nd, Nl, No), matched with PCRE2's \p{N}.
class DigitsPreTokenizer final : public PreTokenizer {
 public:
  explicit DigitsPreTokenizer(bool individual_digits)
      : numeric_("\\p{N}", "Digits"),
        behavior_(individual_digits ? SplitBehavior::kIsolated : SplitBehavior::kContiguous) {}

  void pre_tokenize(PieceList* list, PieceList* scratch) const override {
    split_pieces(list, scratch, /*invert=*/false, behavior_, numeric_);
  }

 private:
  Regex numeric_;
  SplitBehavior behavior_;
};

// ByteLevel: optionally a leading space, optionally GPT-2's regex split, then every byte
// rewritten as its byte-level character.
class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space),
        regex_(use_regex ? std::make_unique<Regex>(kGpt2Pattern, "ByteLevel") : nullptr) {}

  void pre_tokenize(PieceList* list, PieceList* scratch) const override {
    const ByteLevelAlphabet& alphabet = ByteLevelAlphabet::get();
    scratch->text.clear();
    scratch->pieces.clear();
    std::string prefixed;
    std::vector<Span> spans;
    for (const TextPiece& piece : list->pieces) {
      std::string_view s = list->view(piece);
      if (add_prefix_space_ && s[0] != ' ') {
        prefixed.assign(1, ' ');
        prefixed.append(s);
        s = prefixed;
      }
      if (regex_) {
        // Isolated: matches and gaps alike become pieces.
        collect_spans(s.size(), false,
                      [&](auto&& on_match) { regex_->for_each_match(s, on_match); }, &spans);
      } else {
        spans.assign(1, Span{0, s.size(), false});
      }
      for (const Span& span : spans) {
        if (span.begin == span.end) continue;
        const size_t begin = scratch->text.size();
        for (size_t i = span.begin; i < span.end; ++i) {
          scratch->text += alphabet.char_of(static_cast<uint8_t>(s[i]));
        }
        scratch->pieces.push_back({begin, scratch->text.size(), piece.at_origin && span.begin == 0});
      }
    }
    std::swap(*list, *scratch);
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;
};

enum class PrependScheme { kAlways, kFirst, kNever };

// Metaspace: spaces become the replacement character ("▁"), one is prepended as the scheme
// says, and with split=true each "▁" starts a new piece.
class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {
    size_t len = 0;
    replacement_cp_ = decode_utf8_char(replacement_, 0, &len);
  }

  void pre_tokenize(PieceList* list, PieceList* scratch) const override {
    scratch->text.clear();
    scratch->pieces.clear();
    std::string rewritten;
    std::vector<Span> spans;
    std::vector<Span> kept;
    for (const TextPiece& piece : list->pieces) {
      const std::string_view s = list->view(piece);
      rewritten.clear();
      for (char c : s) {
        if (c == ' ') {
          rewritten += replacement_;
        } else {
          rewritten.push_back(c);
        }
      }
      const bool starts_with_replacement = rewritten.compare(0, replacement_.size(), replacement_) == 0;
      const bool prepend = !starts_with_replacement &&
                           (scheme_ == PrependScheme::kAlways ||
                            (scheme_ == PrependScheme::kFirst && piece.at_origin));
      if (prepend) rewritten.insert(0, replacement_);

      const size_t base = scratch->text.size();
      scratch->text += rewritten;
      const TextPiece whole{base, base + rewritten.size(), piece.at_origin};
      if (!split_) {
        scratch->pieces.push_back(whole);
        continue;
      }
      const uint32_t replacement_cp = replacement_cp_;
      collect_spans(rewritten.size(), false,
                    char_matches(rewritten, [replacement_cp](uint32_t cp) { return cp == replacement_cp; }),
                    &spans);
      kept.clear();
      apply_split_behavior(spans, SplitBehavior::kMergedWithNext, &kept);
      push_spans(whole, kept, &scratch->pieces);
    }
    std::swap(*list, *scratch);
  }

 private:
  std::string replacement_;
  uint32_t replacement_cp_ = 0;
  PrependScheme scheme_;
  bool split_;
};

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  void pre_tokenize(PieceList* list, PieceList* scratch) const override {
    for (const auto& step : steps_) step->pre_tokenize(list, scratch);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

PrependScheme parse_prepend_scheme(const json& j, const std::string& origin) {
  auto it = j.find("prepend_scheme");
  if (it == j.end() || it->is_null()) {
    // Files written before prepend_scheme existed say add_prefix_space.
    return hf_json::get_bool_or(j, "add_prefix_space", true, origin) ? PrependScheme::kAlways
                                                                      : PrependScheme::kNever;
  }
  const std::string name = hf_json::get_string(j, "prepend_scheme", origin);
  if (name == "always") return PrependScheme::kAlways;
  if (name == "first") return PrependScheme::kFirst;
  if (name == "never") return PrependScheme::kNever;
  throw_value_error(origin, ": prepend_scheme \"", name, "\" is not one of always, first, never");
}

}  // namespace

void apply_split_behavior(const std::vector<Span>& spans, SplitBehavior behavior,
                          std::vector<Span>* out) {
  const size_t first = out->size();
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      out->insert(out->end(), spans.begin(), spans.end());
      break;
    case SplitBehavior::kRemoved:
      for (const Span& span : spans) {
        if (!span.is_match) out->push_back(span);
      }
      break;
    case SplitBehavior::kContiguous:
      for (const Span& span : spans) {
        if (span.is_match == previous_match && out->size() > first) {
          out->back().end = span.end;
        } else {
          out->push_back(span);
        }
        previous_match = span.is_match;
      }
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const Span& span : spans) {
        if (span.is_match && !previous_match && out->size() > first) {
          out->back().end = span.end;
        } else {
          out->push_back(span);
        }
        previous_match = span.is_match;
      }
      break;
    case SplitBehavior::kMergedWithNext: {
      // Walks right to left: a match joins the span after it unless that one is a match too.
      std::vector<Span> reversed;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !reversed.empty()) {
          reversed.back().begin = it->begin;
        } else {
          reversed.push_back(*it);
        }
        previous_match = it->is_match;
      }
      out->insert(out->end(), reversed.rbegin(), reversed.rend());
      break;
    }
  }
  // Hugging Face drops empty splits.
  size_t kept = first;
  for (size_t i = first; i < out->size(); ++i) {
    if ((*out)[i].begin != (*out)[i].end) (*out)[kept++] = (*out)[i];
  }
  out->resize(kept);
}

std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const json& j, const std::string& origin) {
  if (j.is_null()) return nullptr;
  const std::string type = hf_json::component_type(j, origin);
  const std::string where = origin + " (" + type + ")";
  if (type == "Split") {
    return std::make_unique<SplitPreTokenizer>(
        TextPattern::parse(hf_json::require(j, "pattern", where), where + " pattern"),
        parse_behavior(j, where), hf_json::get_bool_or(j, "invert", false, where));
  }
  if (type == "ByteLevel") {
    return std::make_unique<ByteLevelPreTokenizer>(
        hf_json::get_bool_or(j, "add_prefix_space", true, where),
        hf_json::get_bool_or(j, "use_regex", true, where));
  }
  if (type == "Metaspace") {
    return std::make_unique<MetaspacePreTokenizer>(hf_json::get_char(j, "replacement", where),
                                                   parse_prepend_scheme(j, where),
                                                   hf_json::get_bool_or(j, "split", true, where));
  }
  if (type == "Digits") {
    return std::make_unique<DigitsPreTokenizer>(
        hf_json::get_bool_or(j, "individual_digits", false, where));
  }
  if (type == "Whitespace") {
    // Hugging Face: the text between matches of \w+|[^\w\s]+ is removed.
    return std::make_unique<SplitPreTokenizer>(
        TextPattern::parse(json{{"Regex", "\\w+|[^\\w\\s]+"}}, where), SplitBehavior::kRemoved,
        /*invert=*/true);
  }
  if (type == "WhitespaceSplit") {
    return make_char_split([](uint32_t cp) { return is_white_space(cp); }, SplitBehavior::kRemoved);
  }
  if (type == "Sequence") {
    const json& list = hf_json::require(j, "pretokenizers", where);
    LLMCORE_CHECK_ARG(list.is_array(), where, ": \"pretokenizers\" must be a list, got ",
                      list.dump());
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (size_t i = 0; i < list.size(); ++i) {
      auto step = parse_pre_tokenizer(list[i], origin + ".pretokenizers[" + std::to_string(i) + "]");
      if (step) steps.push_back(std::move(step));
    }
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  throw_value_error(origin, ": pre-tokenizer type \"", type,
                    "\" is not supported (supported: Split, ByteLevel, Metaspace, Digits, "
                    "Whitespace, WhitespaceSplit, Sequence)");
}

}  // namespace llmcore
