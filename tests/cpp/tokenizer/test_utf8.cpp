#include <gtest/gtest.h>

#include <random>
#include <string>

#include "tokenizer/sp_test_model.h"
#include "tokenizer/utf8.h"

namespace llmcore {
namespace {

const std::string kFffd = "\xEF\xBF\xBD";

TEST(Utf8, ValidStringsAreValid) {
  for (const std::string s : {"", "abc", "中文", "😀 ok", "\xC2\x80", "\xF4\x8F\xBF\xBF", "é"}) {
    EXPECT_TRUE(is_valid_utf8(s)) << s;
    EXPECT_EQ(replace_invalid_utf8(s), s);
  }
}

// Expected strings follow the Unicode "maximal subpart" rule (what Python's
// bytes.decode("utf-8", "replace") does), derived by hand for each input.
TEST(Utf8, ReplacesEachMaximalSubpartWithOneReplacementChar) {
  struct Case {
    std::string in, out;
  };
  const Case cases[] = {
      {"\xE4", kFffd},                                      // lone lead byte of a 3-byte char
      {"\xE4\xB8", kFffd},                                  // incomplete 3-byte char: one subpart
      {"\xE4\xB8\x41", kFffd + "A"},                        // broken by ASCII "A"
      {"\xC0\x80", kFffd + kFffd},                          // C0 is never a lead byte
      {"\xED\xA0\x80", kFffd + kFffd + kFffd},              // surrogate U+D800
      {"\xF0\x9F\x98", kFffd},                              // 3 of the 4 bytes of U+1F600
      {"\xF4\x90\x80\x80", kFffd + kFffd + kFffd + kFffd},  // above U+10FFFF
      {"\xE0\x80\x80", kFffd + kFffd + kFffd},              // overlong
      {"\xFF", kFffd},
      {"a\x80\x62", "a" + kFffd + "b"},  // stray continuation byte
      {"\xF0\x9F\x98\x80\xF0\x9F", "\xF0\x9F\x98\x80" + kFffd},
  };
  for (const Case& c : cases) {
    EXPECT_FALSE(is_valid_utf8(c.in));
    EXPECT_EQ(replace_invalid_utf8(c.in), c.out);
  }
}

TEST(Utf8, RandomBytesAgreeWithCodePointCheck) {
  std::mt19937 rng(7);
  // Bytes drawn mostly from lead / continuation ranges so that valid sequences occur too.
  const unsigned char alphabet[] = {'a',  ' ',  0x80, 0x9F, 0xA0, 0xBF, 0xC2, 0xDF, 0xE0,
                                    0xE4, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xC0, 0x8F, 0x90};
  for (int iter = 0; iter < 20000; ++iter) {
    std::string s;
    const int len = rng() % 8;
    for (int i = 0; i < len; ++i) s += static_cast<char>(alphabet[rng() % sizeof(alphabet)]);
    ASSERT_EQ(is_valid_utf8(s), test_util::naive_valid_utf8(s)) << iter;
    const std::string fixed = replace_invalid_utf8(s);
    ASSERT_TRUE(test_util::naive_valid_utf8(fixed)) << iter;
    if (test_util::naive_valid_utf8(s)) {
      ASSERT_EQ(fixed, s);
    }
  }
}

TEST(Utf8, FloorBoundaryNeverEndsInsideACharacter) {
  const std::string s =
      "a\xE4\xB8\xAD"
      "b";  // "a中b": boundaries 0, 1, 4, 5
  const size_t expected[] = {0, 1, 1, 1, 4, 5};
  for (size_t pos = 0; pos <= s.size(); ++pos)
    EXPECT_EQ(utf8_floor_boundary(s, pos), expected[pos]);
  EXPECT_EQ(utf8_floor_boundary(s, 100), s.size());
}

TEST(Utf8, EndsWithReplacementChar) {
  EXPECT_TRUE(ends_with_replacement_char("ab" + kFffd));
  EXPECT_FALSE(ends_with_replacement_char(kFffd + "a"));
  EXPECT_FALSE(ends_with_replacement_char("\xBF"));
}

}  // namespace
}  // namespace llmcore
