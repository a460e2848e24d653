// UTF-8 helpers for tokenizer output: decoded byte-fallback pieces can form invalid or
// incomplete sequences, and text shown to users must always be valid UTF-8.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace llmcore {

// "\xEF\xBF\xBD", U+FFFD REPLACEMENT CHARACTER: what an invalid byte sequence decodes to.
inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";

// Length in bytes of the well-formed UTF-8 character starting at s[pos] (Unicode Table 3-7:
// no overlongs, no surrogates, nothing above U+10FFFF), or 0 if none starts there.
size_t utf8_char_length(std::string_view s, size_t pos);

bool is_valid_utf8(std::string_view s);

// Replaces each maximal ill-formed subpart with one U+FFFD (the Unicode-recommended practice,
// same as Python's bytes.decode("utf-8", "replace")). Valid input comes back unchanged.
std::string replace_invalid_utf8(std::string_view s);

// The largest character boundary <= pos in valid UTF-8 `s` (pos is clamped to s.size()), so
// s.substr(0, result) never ends inside a character.
size_t utf8_floor_boundary(std::string_view s, size_t pos);

bool ends_with_replacement_char(std::string_view s);

}  // namespace llmcore
