// tokenizer.json components on their own: Unicode normalization against hand-worked Unicode
// data, normalizers, pre-tokenizers (Hugging Face's documented Split examples), decoders, and the
// Oniguruma-to-PCRE2 regex translation.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "core/error.h"
#include "tokenizer/decoders.h"
#include "tokenizer/hf_regex.h"
#include "tokenizer/normalizers.h"
#include "tokenizer/pre_tokenizers.h"
#include "tokenizer/test_hf_util.h"
#include "tokenizer/unicode_normalization.h"

namespace llmcore {
namespace {

using nlohmann::json;
using test_util::byte_level;
using Strings = std::vector<std::string>;

std::string nfc(const std::string& s) { return normalize_unicode(s, NormalizationForm::kNFC); }
std::string nfd(const std::string& s) { return normalize_unicode(s, NormalizationForm::kNFD); }
std::string nfkc(const std::string& s) { return normalize_unicode(s, NormalizationForm::kNFKC); }
std::string nfkd(const std::string& s) { return normalize_unicode(s, NormalizationForm::kNFKD); }

TEST(HfUnicode, ComposesAndDecomposesCanonically) {
  EXPECT_EQ(nfc("e\u0301"), "\u00e9");
  EXPECT_EQ(nfd("\u00e9"), "e\u0301");
  EXPECT_EQ(nfc("plain ascii"), "plain ascii");
  // U+1E09 (c cedilla acute) decomposes recursively: U+00E7 U+0301 -> c U+0327 U+0301.
  EXPECT_EQ(nfd("\u1e09"), "c\u0327\u0301");
  EXPECT_EQ(nfc("c\u0301\u0327"), "\u1e09");  // reordered (ccc 202 before 230), then composed
}

TEST(HfUnicode, OrdersCombiningMarksByClass) {
  // dot below (ccc 220) sorts before acute (ccc 230); equal classes keep their order.
  EXPECT_EQ(nfd("a\u0301\u0323"), "a\u0323\u0301");
  EXPECT_EQ(nfd("a\u0301\u0300"), "a\u0301\u0300");
  // a + dot below composes to U+1EA1; nothing precomposes U+1EA1 + acute.
  EXPECT_EQ(nfc("a\u0301\u0323"), "\u1ea1\u0301");
  // The second acute is blocked by the first (same class): only one composes.
  EXPECT_EQ(nfc("a\u0301\u0301"), "\u00e1\u0301");
}

TEST(HfUnicode, HangulByFormula) {
  // L = U+1100 (index 0), V = U+1161 (0), T = U+11A8 (1): S = 0xAC00 + (0 * 21 + 0) * 28 + 1.
  EXPECT_EQ(nfc("\u1100\u1161\u11a8"), "\uac01");
  EXPECT_EQ(nfd("\uac01"), "\u1100\u1161\u11a8");
  // 0xD7A3 is the last syllable: index 11171 = 18 * 588 + 20 * 28 + 27.
  EXPECT_EQ(nfd("\ud7a3"), "\u1112\u1175\u11c2");
}

TEST(HfUnicode, ExclusionsSingletonsAndCompatibility) {
  EXPECT_EQ(nfc("\u0958"), "\u0915\u093c");  // composition exclusion stays decomposed
  EXPECT_EQ(nfc("\u212b"), "\u00c5");        // ANGSTROM SIGN is a singleton for Å
  EXPECT_EQ(nfc("\u2126"), "\u03a9");        // OHM SIGN -> GREEK CAPITAL OMEGA
  EXPECT_EQ(nfc("\ufb01"), "\ufb01");        // canonical forms keep the ligature
  EXPECT_EQ(nfkc("\ufb01"), "fi");
  EXPECT_EQ(nfkd("\u00bd"), "1\u20442");
  EXPECT_EQ(nfkc("\uff21\uff22"), "AB");     // fullwidth letters
  EXPECT_EQ(nfkc("\u1e9b\u0323"), "\u1e69");  // UAX #15's example: long s with dots -> ṩ
  EXPECT_EQ(nfkd("\u1e9b\u0323"), "s\u0323\u0307");
}

TEST(HfUnicode, LowercasePerCharacter) {
  EXPECT_EQ(to_lowercase("ABC xyz"), "abc xyz");
  EXPECT_EQ(to_lowercase("\u00c0\u03a3\u0391\u03a3"), "\u00e0\u03c3\u03b1\u03c3");  // no final sigma
  EXPECT_EQ(to_lowercase("\u0130"), "i\u0307");  // İ lowercases to two characters
  EXPECT_EQ(to_lowercase("\u4e2d"), "\u4e2d");
}

std::string run_normalizer(const json& j, std::string text) {
  auto normalizer = parse_normalizer(j, "test normalizer");
  normalizer->normalize(&text);
  return text;
}

TEST(HfNormalizers, PrependReplaceStripSequence) {
  EXPECT_EQ(run_normalizer({{"type", "Prepend"}, {"prepend", "\u2581"}}, "hi"), "\u2581hi");
  EXPECT_EQ(run_normalizer({{"type", "Prepend"}, {"prepend", "\u2581"}}, ""), "");
  const json replace_space = {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\u2581"}};
  EXPECT_EQ(run_normalizer(replace_space, " a  b "), "\u2581a\u2581\u2581b\u2581");
  const json squeeze = {{"type", "Replace"}, {"pattern", {{"Regex", " {2,}"}}}, {"content", " "}};
  EXPECT_EQ(run_normalizer(squeeze, "a  b     c d"), "a b c d");
  const json strip = {{"type", "Strip"}, {"strip_left", true}, {"strip_right", false}};
  EXPECT_EQ(run_normalizer(strip, "\u3000\t x \n"), "x \n");
  const json sequence = {{"type", "Sequence"},
                         {"normalizers", json::array({{{"type", "NFKC"}}, {{"type", "Lowercase"}}})}};
  EXPECT_EQ(run_normalizer(sequence, "\uff21B\ufb01"), "abfi");
}

Strings pre_tokenize(const json& j, const std::string& text, bool at_origin = true) {
  auto pre_tokenizer = parse_pre_tokenizer(j, "test pre_tokenizer");
  PieceList list;
  PieceList scratch;
  list.text = text;
  list.pieces.push_back({0, text.size(), at_origin});
  pre_tokenizer->pre_tokenize(&list, &scratch);
  Strings out;
  for (const TextPiece& piece : list.pieces) out.emplace_back(list.view(piece));
  return out;
}

json split(const json& pattern, const std::string& behavior, bool invert = false) {
  return {{"type", "Split"}, {"pattern", pattern}, {"behavior", behavior}, {"invert", invert}};
}

// The examples of Hugging Face's SplitDelimiterBehavior documentation.
TEST(HfPreTokenizers, SplitBehaviorsMatchTheDocumentedExamples) {
  const json dash = {{"String", "-"}};
  const std::string text = "the-final--countdown";
  EXPECT_EQ(pre_tokenize(split(dash, "Removed"), text), (Strings{"the", "final", "countdown"}));
  EXPECT_EQ(pre_tokenize(split(dash, "Isolated"), text),
            (Strings{"the", "-", "final", "-", "-", "countdown"}));
  EXPECT_EQ(pre_tokenize(split(dash, "MergedWithPrevious"), text),
            (Strings{"the-", "final-", "-", "countdown"}));
  EXPECT_EQ(pre_tokenize(split(dash, "MergedWithNext"), text),
            (Strings{"the", "-final", "-", "-countdown"}));
  EXPECT_EQ(pre_tokenize(split(dash, "Contiguous"), text),
            (Strings{"the", "-", "final", "--", "countdown"}));
  // invert: the matches are the kept text, the gaps the delimiters.
  EXPECT_EQ(pre_tokenize(split({{"Regex", "[a-z]+"}}, "Removed", true), "ab, cd!"),
            (Strings{"ab", "cd"}));
}

TEST(HfPreTokenizers, ByteLevelMetaspaceDigits) {
  const json byte_level_pt = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}};
  EXPECT_EQ(pre_tokenize(byte_level_pt, "Hello world!"),
            (Strings{byte_level(" Hello"), byte_level(" world"), byte_level("!")}));
  EXPECT_EQ(pre_tokenize(byte_level_pt, "\xe4\xb8\xad"), (Strings{byte_level(" \xe4\xb8\xad")}));

  json metaspace = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "always"},
                    {"split", true}};
  EXPECT_EQ(pre_tokenize(metaspace, "Hey  friend"),
            (Strings{"\u2581Hey", "\u2581", "\u2581friend"}));
  metaspace["prepend_scheme"] = "first";
  EXPECT_EQ(pre_tokenize(metaspace, "Hey friend", /*at_origin=*/false), (Strings{"Hey", "\u2581friend"}));
  EXPECT_EQ(pre_tokenize(metaspace, "Hey friend", /*at_origin=*/true),
            (Strings{"\u2581Hey", "\u2581friend"}));
  metaspace["split"] = false;
  EXPECT_EQ(pre_tokenize(metaspace, "Hey friend"), (Strings{"\u2581Hey\u2581friend"}));

  EXPECT_EQ(pre_tokenize({{"type", "Digits"}, {"individual_digits", true}}, "Call 123 ok"),
            (Strings{"Call ", "1", "2", "3", " ok"}));
  EXPECT_EQ(pre_tokenize({{"type", "Digits"}, {"individual_digits", false}}, "Call 123 ok"),
            (Strings{"Call ", "123", " ok"}));
  const json sequence = {{"type", "Sequence"},
                         {"pretokenizers", json::array({{{"type", "WhitespaceSplit"}},
                                                        {{"type", "Digits"}, {"individual_digits", true}}})}};
  EXPECT_EQ(pre_tokenize(sequence, " a12\tb "), (Strings{"a", "1", "2", "b"}));
}

TEST(HfRegex, OnigurumaClassesAreTranslated) {
  // Oniguruma's \s is White_Space: NEL (U+0085) yes, Mongolian vowel separator (U+180E) no.
  EXPECT_EQ(pre_tokenize(split({{"Regex", "\\s+"}}, "Removed"), "a\xc2\x85" "b\u180ec"),
            (Strings{"a", "b\u180ec"}));
  // \w takes combining marks (an accent after e stays in the word) and \h is a hex digit.
  EXPECT_EQ(pre_tokenize(split({{"Regex", "\\w+"}}, "Removed", true), "ce\u0301 x"),
            (Strings{"ce\u0301", "x"}));
  EXPECT_EQ(pre_tokenize(split({{"Regex", "\\h+"}}, "Isolated"), "beef stew"),
            (Strings{"beef", " st", "e", "w"}));
  // Inside a class and with \Q..\E the translation keeps the meaning.
  EXPECT_EQ(translate_oniguruma_pattern("\\Q\\s\\E"), "\\Q\\s\\E");
  EXPECT_NE(translate_oniguruma_pattern("[^\\s\\p{L}]").find("\\x{85}"), std::string::npos);
  // ^ and $ are line anchors, as in Oniguruma.
  EXPECT_EQ(pre_tokenize(split({{"Regex", "^b"}}, "Isolated"), "a\nb"), (Strings{"a\n", "b"}));
}

std::string run_decoder(const json& j, Strings tokens) {
  auto decoder = parse_decoder(j, "test decoder");
  decoder->decode_chain(&tokens);
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

TEST(HfDecoders, EachDecoder) {
  const json byte_level_dec = {{"type", "ByteLevel"}};
  EXPECT_EQ(run_decoder(byte_level_dec, {byte_level(" Hello"), byte_level(" \xe4\xb8"), byte_level("\xad")}),
            " Hello \xe4\xb8\xad");
  // A token outside the alphabet passes through; a cut character becomes U+FFFD.
  EXPECT_EQ(run_decoder(byte_level_dec, {" raw ", byte_level("\xe4\xb8")}), " raw \xef\xbf\xbd");

  const json metaspace = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "always"}};
  // Every replacement in the first token is dropped, not only a leading one (as in HF).
  EXPECT_EQ(run_decoder(metaspace, {"\u2581Hey\u2581", "\u2581friend"}), "Hey friend");
  const json never = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "never"}};
  EXPECT_EQ(run_decoder(never, {"\u2581Hey", "\u2581friend"}), " Hey friend");

  const json fallback = {{"type", "ByteFallback"}};
  EXPECT_EQ(run_decoder(fallback, {"a", "<0xE4>", "<0xB8>", "<0xAD>", "b"}), "a\xe4\xb8\xad" "b");
  // An invalid run gives one U+FFFD per byte token.
  EXPECT_EQ(run_decoder(fallback, {"<0xE4>", "<0xB8>", "x"}), "\xef\xbf\xbd\xef\xbf\xbdx");
  EXPECT_EQ(run_decoder(fallback, {"<0x41>", "<0xZZ>"}), "A<0xZZ>");

  const json strip = {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 2}};
  auto strip_decoder = parse_decoder(strip, "test decoder");
  Strings tokens = {"  a  ", " ", "b   "};
  strip_decoder->decode_chain(&tokens);
  EXPECT_EQ(tokens, (Strings{" a", "", "b "}));

  const json replace = {{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}};
  const json sequence = {{"type", "Sequence"},
                         {"decoders", json::array({replace, fallback, {{"type", "Fuse"}},
                                                   {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}};
  EXPECT_EQ(run_decoder(sequence, {"\u2581Hi", "\u2581", "<0xC3>", "<0xA9>"}), "Hi \xc3\xa9");
}

TEST(HfComponents, UnsupportedTypesNameTheComponent) {
  try {
    parse_pre_tokenizer({{"type", "Sequence"}, {"pretokenizers", json::array({{{"type", "Punctuation"}}})}},
                        "tokenizer.json pre_tokenizer");
    FAIL() << "expected ValueError";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("pre_tokenizer.pretokenizers[0]"), std::string::npos) << message;
    EXPECT_NE(message.find("\"Punctuation\""), std::string::npos) << message;
  }
  EXPECT_THROW(parse_normalizer({{"type", "BertNormalizer"}}, "n"), Error);
  EXPECT_THROW(parse_decoder({{"type", "CTC"}}, "d"), Error);
  EXPECT_THROW(parse_decoder({{"type", "Metaspace"}, {"replacement", "ab"}}, "d"), Error);
}

}  // namespace
}  // namespace llmcore
