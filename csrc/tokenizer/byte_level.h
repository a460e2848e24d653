// GPT-2's byte-level alphabet: each of the 256 byte values is shown as one printable character
// (bytes 0x21-0x7E, 0xA1-0xAC and 0xAE-0xFF as themselves, the other 68 as U+0100 upwards, so a
// space is "Ġ" U+0120 and a newline "Ċ" U+010A). Byte-level BPE vocabularies are written in it.
#pragma once

#include <array>
#include <cstdint>
#include <string>

namespace llmcore {

class ByteLevelAlphabet {
 public:
  static const ByteLevelAlphabet& get() {
    static const ByteLevelAlphabet alphabet;
    return alphabet;
  }

  // UTF-8 of the character standing for `byte` (1 or 2 bytes).
  const std::string& char_of(uint8_t byte) const { return chars_[byte]; }
  // The byte a code point stands for, or -1 when it is not in the alphabet.
  int byte_of(uint32_t cp) const { return cp < bytes_.size() ? bytes_[cp] : -1; }

 private:
  ByteLevelAlphabet() {
    bytes_.fill(-1);
    uint32_t next = 256;  // code points given to the bytes that are not printable as themselves
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const uint32_t cp = printable ? static_cast<uint32_t>(b) : next++;
      bytes_[cp] = static_cast<int16_t>(b);
      std::string& utf8 = chars_[b];
      if (cp < 0x80) {
        utf8.push_back(static_cast<char>(cp));
      } else {
        utf8.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        utf8.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      }
    }
  }

  std::array<std::string, 256> chars_;
  std::array<int16_t, 324> bytes_;  // [code point < 256 + 68] -> byte or -1
};

}  // namespace llmcore
