#include "tokenizer/utf8.h"

#include <cstdint>

namespace llmcore {

namespace {

bool is_continuation(uint8_t byte) { return (byte & 0xC0) == 0x80; }

// Number of leading bytes of s[pos..] that are a prefix of some well-formed character: a
// "maximal subpart" when the character is incomplete or broken (at least 1 for any byte).
size_t maximal_subpart_length(std::string_view s, size_t pos) {
  const auto lead = static_cast<uint8_t>(s[pos]);
  size_t need;        // continuation bytes the lead byte asks for
  uint8_t lo = 0x80;  // allowed range of the first continuation byte (Table 3-7)
  uint8_t hi = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    need = 1;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    need = 2;
    if (lead == 0xE0) lo = 0xA0;  // overlong below U+0800
    if (lead == 0xED) hi = 0x9F;  // surrogates U+D800..U+DFFF
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    need = 3;
    if (lead == 0xF0) lo = 0x90;  // overlong below U+10000
    if (lead == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return 1;  // ASCII is handled by the caller; C0, C1, F5..FF and stray continuations
  }
  size_t len = 1;
  for (size_t k = 0; k < need; ++k) {
    if (pos + len >= s.size()) break;
    const auto byte = static_cast<uint8_t>(s[pos + len]);
    const bool ok = (k == 0) ? (byte >= lo && byte <= hi) : is_continuation(byte);
    if (!ok) break;
    ++len;
  }
  return len;
}

size_t expected_length(uint8_t lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

}  // namespace

size_t utf8_char_length(std::string_view s, size_t pos) {
  if (pos >= s.size()) return 0;
  const auto lead = static_cast<uint8_t>(s[pos]);
  if (lead < 0x80) return 1;
  const size_t want = expected_length(lead);
  if (want == 0) return 0;
  return maximal_subpart_length(s, pos) == want ? want : 0;
}

bool is_valid_utf8(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    const size_t len = utf8_char_length(s, pos);
    if (len == 0) return false;
    pos += len;
  }
  return true;
}

std::string replace_invalid_utf8(std::string_view s) {
  if (is_valid_utf8(s)) return std::string(s);
  std::string out;
  out.reserve(s.size() + 8);
  size_t pos = 0;
  while (pos < s.size()) {
    const size_t len = utf8_char_length(s, pos);
    if (len > 0) {
      out.append(s.substr(pos, len));
      pos += len;
    } else {
      out.append(kReplacementChar);
      pos += maximal_subpart_length(s, pos);
    }
  }
  return out;
}

size_t utf8_floor_boundary(std::string_view s, size_t pos) {
  if (pos >= s.size()) return s.size();
  while (pos > 0 && is_continuation(static_cast<uint8_t>(s[pos]))) --pos;
  return pos;
}

bool ends_with_replacement_char(std::string_view s) {
  return s.size() >= kReplacementChar.size() &&
         s.substr(s.size() - kReplacementChar.size()) == kReplacementChar;
}

}  // namespace llmcore
