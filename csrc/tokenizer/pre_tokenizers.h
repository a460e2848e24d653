// tokenizer.json pre-tokenizers: cut normalized text into the pieces the BPE model encodes one
// by one (and for ByteLevel / Metaspace, rewrite them). Supported: Split (String or Regex
// pattern, every behavior, invert), ByteLevel, Metaspace, Digits, Whitespace, WhitespaceSplit
// and Sequence; any other type is refused at load with a ValueError naming it.
#pragma once

#include <cstddef>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace llmcore {

// Bytes [begin, end) of PieceList::text.
struct TextPiece {
  size_t begin = 0;
  size_t end = 0;
  // Starts where the encode() input starts: Metaspace's prepend_scheme "first" adds its "▁"
  // only there (Hugging Face: the piece's original offset is 0).
  bool at_origin = false;
};

struct PieceList {
  std::string text;
  std::vector<TextPiece> pieces;  // in text order, never empty
  std::string_view view(const TextPiece& piece) const {
    return std::string_view(text).substr(piece.begin, piece.end - piece.begin);
  }
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces list's pieces by their splits (possibly with new text). scratch is caller-owned
  // space a step may build its output in; its content on return is unspecified.
  virtual void pre_tokenize(PieceList* list, PieceList* scratch) const = 0;
};

// The pre-tokenizer described by `j` (tokenizer.json's "pre_tokenizer"); nullptr for null.
std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const nlohmann::json& j, const std::string& origin);

// Hugging Face's SplitDelimiterBehavior: what happens to the matched delimiters of a split.
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct Span {
  size_t begin = 0;
  size_t end = 0;
  bool is_match = false;
};

// spans: matches and the gaps between them, covering a piece in order. Appends to `out` the
// ranges `behavior` keeps (merged as it says); empty ranges are left out.
void apply_split_behavior(const std::vector<Span>& spans, SplitBehavior behavior,
                          std::vector<Span>* out);

}  // namespace llmcore
