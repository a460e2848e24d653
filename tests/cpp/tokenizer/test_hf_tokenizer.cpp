// HfTokenizer on hand-written tokenizer.json files: BPE merge order, both merge spellings,
// ignore_merges, byte_fallback, unk / fuse_unk, subword prefix / suffix, added tokens and their
// ids, the template post-processor, BOS / EOS from tokenizer_config.json, refusals, and
// load_tokenizer's choice of file. Expected ids are worked out by hand in each test.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "tokenizer/sp_test_model.h"
#include "tokenizer/test_hf_util.h"
#include "tokenizer/tokenizer.h"

namespace llmcore {
namespace {

using nlohmann::json;
using test_util::added_token;
using test_util::bpe_model;
using test_util::bpe_model_json;
using test_util::make_tokenizer;
using test_util::tokenizer_json;
using Ids = std::vector<int32_t>;

Ids encode(const json& j, const std::string& text, bool add_special = false) {
  return make_tokenizer(j)->encode(text, add_special);
}

TEST(HfBpe, AppliesMergesLowestRankFirst) {
  const std::vector<std::string> tokens = {"a", "b", "c", "ab", "bc", "abc"};
  // b+c (rank 0) before a+b (rank 1); then a+bc (rank 2) gives abc.
  EXPECT_EQ(encode(tokenizer_json(bpe_model(tokens, {{"b", "c"}, {"a", "b"}, {"a", "bc"}})), "abc"),
            (Ids{5}));
  // Same first merge, but only ab+c exists afterwards: a, bc stay apart.
  EXPECT_EQ(encode(tokenizer_json(bpe_model(tokens, {{"b", "c"}, {"a", "b"}, {"ab", "c"}})), "abc"),
            (Ids{0, 4}));
  EXPECT_EQ(encode(tokenizer_json(bpe_model(tokens, {{"a", "b"}, {"b", "c"}, {"ab", "c"}})), "abc"),
            (Ids{5}));
}

TEST(HfBpe, BothMergeSpellingsAgree) {
  const std::vector<std::string> tokens = {"a", "b", "c", "ab", "bc", "abc"};
  const json pairs = json::array({json::array({"b", "c"}), json::array({"a", "bc"})});
  const json strings = json::array({"b c", "a bc"});
  for (const std::string text : {"abc", "cab", "abcabc", "bcbc"}) {
    EXPECT_EQ(encode(tokenizer_json(bpe_model_json(tokens, pairs)), text),
              encode(tokenizer_json(bpe_model_json(tokens, strings)), text))
        << text;
  }
  EXPECT_EQ(encode(tokenizer_json(bpe_model_json(tokens, strings)), "cab"), (Ids{2, 0, 1}));
}

TEST(HfBpe, LeftmostFirstOnEqualRanksAndLongWords) {
  const json model = bpe_model({"a", "aa", "aaaa", "aaaaaaaa"},
                               {{"a", "a"}, {"aa", "aa"}, {"aaaa", "aaaa"}});
  EXPECT_EQ(encode(tokenizer_json(model), "aaa"), (Ids{1, 0}));
  // 1001 a: 500 pairs + a, then 250 aaaa, then 125 aaaaaaaa; the odd a stays last.
  Ids want(125, 3);
  want.push_back(0);
  EXPECT_EQ(encode(tokenizer_json(model), std::string(1001, 'a')), want);
}

TEST(HfBpe, IgnoreMergesTakesWholeVocabularyWords) {
  json model = bpe_model({"a", "b", "c", "ab", "abc"}, {{"a", "b"}});
  EXPECT_EQ(encode(tokenizer_json(model), "abc"), (Ids{3, 2}));
  model["ignore_merges"] = true;
  EXPECT_EQ(encode(tokenizer_json(model), "abc"), (Ids{4}));
  EXPECT_EQ(encode(tokenizer_json(model), "abcc"), (Ids{3, 2, 2}));  // not a word: merges as usual
}

TEST(HfBpe, ByteFallbackAndUnknownCharacters) {
  std::vector<std::string> tokens = {"<unk>", "a"};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    tokens.push_back(name);
  }
  json model = bpe_model(tokens, {});
  model["byte_fallback"] = true;
  json j = tokenizer_json(model);
  j["decoder"] = {{"type", "Sequence"}, {"decoders", json::array({{{"type", "ByteFallback"}}, {{"type", "Fuse"}}})}};
  auto tok = make_tokenizer(j);
  // 中 is E4 B8 AD; <0xXX> has id 2 + XX.
  const Ids ids = tok->encode("a\xe4\xb8\xad", false);
  EXPECT_EQ(ids, (Ids{1, 2 + 0xE4, 2 + 0xB8, 2 + 0xAD}));
  EXPECT_EQ(tok->decode(ids, true), "a\xe4\xb8\xad");
  EXPECT_EQ(tok->decode({2 + 0xE4, 2 + 0xB8, 1}, true), "\xef\xbf\xbd\xef\xbf\xbd" "a");

  json unk_model = bpe_model({"<unk>", "a"}, {});
  unk_model["unk_token"] = "<unk>";
  EXPECT_EQ(encode(tokenizer_json(unk_model), "a\xe4\xb8\xad\xe4\xb8\xad" "a"), (Ids{1, 0, 0, 1}));
  unk_model["fuse_unk"] = true;
  EXPECT_EQ(encode(tokenizer_json(unk_model), "a\xe4\xb8\xad\xe4\xb8\xad" "a"), (Ids{1, 0, 1}));
  unk_model["unk_token"] = nullptr;
  EXPECT_EQ(encode(tokenizer_json(unk_model), "a\xe4\xb8\xad" "a"), (Ids{1, 1}));  // dropped
  unk_model["unk_token"] = "<missing>";
  EXPECT_THROW(encode(tokenizer_json(unk_model), "a\xe4\xb8\xad"), Error);
  EXPECT_EQ(encode(tokenizer_json(unk_model), "aa"), (Ids{1, 1}));  // only needed when unknown
}

TEST(HfBpe, SubwordPrefixAndWordSuffix) {
  json prefixed = bpe_model({"a", "##b", "ab"}, {{"a", "##b"}});
  prefixed["continuing_subword_prefix"] = "##";
  EXPECT_EQ(encode(tokenizer_json(prefixed), "ab"), (Ids{2}));
  json suffixed = bpe_model({"a", "b</w>", "ab</w>", "b"}, {{"a", "b</w>"}});
  suffixed["end_of_word_suffix"] = "</w>";
  EXPECT_EQ(encode(tokenizer_json(suffixed), "ab"), (Ids{2}));
  EXPECT_EQ(encode(tokenizer_json(suffixed), "abb"), (Ids{0, 3, 1}));
}

TEST(HfBpe, DropoutIsRefusedUnlessZero) {
  json model = bpe_model({"a"}, {});
  model["dropout"] = 0.25;
  try {
    make_tokenizer(tokenizer_json(model));
    FAIL() << "expected ValueError";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("dropout 0.25"), std::string::npos) << e.what();
  }
  model["dropout"] = 0.0;
  EXPECT_EQ(encode(tokenizer_json(model), "a"), (Ids{0}));
}

// Characters a, b, c, space as ids 0..3.
json char_model() { return bpe_model({"a", "b", "c", " "}, {}); }

TEST(HfAddedTokens, IdsFollowHuggingFaceRules) {
  json j = tokenizer_json(char_model());
  // The "id" written in the file is not what decides: a model token keeps its id, a new one
  // takes the next id past the model (4 tokens).
  j["added_tokens"] = json::array({added_token(999, "<s>", true), added_token(7, "a", true),
                                   added_token(3, "<t>", false)});
  auto tok = make_tokenizer(j);
  EXPECT_EQ(tok->token_to_id("<s>"), 4);
  EXPECT_EQ(tok->token_to_id("a"), 0);
  EXPECT_EQ(tok->token_to_id("<t>"), 5);
  EXPECT_EQ(tok->vocab_size(), 6);
  EXPECT_TRUE(tok->is_special(4));
  EXPECT_TRUE(tok->is_special(0));
  EXPECT_FALSE(tok->is_special(5));
  EXPECT_EQ(tok->encode("b<s>c<t>", false), (Ids{1, 4, 2, 5}));
  EXPECT_EQ(tok->encode("<s<s>>", false), (Ids{4}));  // "<s" and ">" are not in the model
  // Without a decoder tokens are joined by spaces; special ones can be skipped.
  EXPECT_EQ(tok->decode({1, 4, 2, 5}, false), "b <s> c <t>");
  EXPECT_EQ(tok->decode({1, 4, 2, 5}, true), "b c <t>");
  EXPECT_EQ(tok->id_to_token(4), "<s>");
  EXPECT_THROW(tok->id_to_token(6), Error);
}

TEST(HfAddedTokens, StripSingleWordAndNormalized) {
  json j = tokenizer_json(char_model());
  json lstrip = added_token(4, "<m>", true);
  lstrip["lstrip"] = true;
  json rstrip = added_token(5, "<r>", true);
  rstrip["rstrip"] = true;
  json single = added_token(6, "ab", false);
  single["single_word"] = true;
  json normalized = added_token(7, "CC", false, /*normalized=*/true);
  j["added_tokens"] = json::array({lstrip, rstrip, single, normalized});
  j["normalizer"] = {{"type", "Lowercase"}};
  auto tok = make_tokenizer(j);
  EXPECT_EQ(tok->encode("a  <m> b", false), (Ids{0, 4, 3, 1}));   // spaces before <m> taken
  EXPECT_EQ(tok->encode("a <r>  b", false), (Ids{0, 3, 5, 1}));   // spaces after <r> taken
  EXPECT_EQ(tok->encode("c ab c", false), (Ids{2, 3, 6, 3, 2}));  // a word of its own
  EXPECT_EQ(tok->encode("cab", false), (Ids{2, 0, 1}));          // inside a word: not matched
  // "CC" is matched as the normalizer spells it, in normalized text ("Cc" -> "cc").
  EXPECT_EQ(tok->encode("aCcb", false), (Ids{0, 7, 1}));
  EXPECT_EQ(tok->id_to_token(7), "cc");
}

TEST(HfPostProcessor, TemplateAddsBosAndEosOnlyWithSpecialTokens) {
  json j = tokenizer_json(char_model());
  j["added_tokens"] = json::array({added_token(4, "<bos>", true), added_token(5, "<eos>", true)});
  json special_tokens = {{"<bos>", {{"id", "<bos>"}, {"ids", {4}}, {"tokens", {"<bos>"}}}},
                         {"<eos>", {{"id", "<eos>"}, {"ids", {5}}, {"tokens", {"<eos>"}}}}};
  json single = json::array({{{"SpecialToken", {{"id", "<bos>"}, {"type_id", 0}}}},
                             {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                             {{"SpecialToken", {{"id", "<eos>"}, {"type_id", 0}}}}});
  j["post_processor"] = {{"type", "Sequence"},
                         {"processors", json::array({{{"type", "ByteLevel"}},
                                                     {{"type", "TemplateProcessing"},
                                                      {"single", single},
                                                      {"pair", json::array()},
                                                      {"special_tokens", special_tokens}}})}};
  TokenizerConfig config;
  config.bos_token = std::optional<std::string>("<bos>");
  config.eos_token = std::optional<std::string>("<eos>");
  auto tok = make_tokenizer(j, config);
  EXPECT_EQ(tok->encode("ab", true), (Ids{4, 0, 1, 5}));
  EXPECT_EQ(tok->encode("ab", false), (Ids{0, 1}));
  EXPECT_EQ(tok->encode("", true), (Ids{4, 5}));
  EXPECT_EQ(tok->bos_token_id(), 4);
  EXPECT_EQ(tok->eos_token_id(), 5);

  config.eos_token = std::optional<std::string>("<nope>");
  EXPECT_THROW(make_tokenizer(j, config), Error);
  EXPECT_EQ(make_tokenizer(j)->bos_token_id(), -1);  // no tokenizer_config.json
}

TEST(HfTokenizer, RefusesInvalidUtf8AndBadFiles) {
  auto tok = make_tokenizer(tokenizer_json(char_model()));
  EXPECT_THROW(tok->encode("a\xff", false), Error);
  EXPECT_THROW(tok->encode("a\xe4\xb8", false), Error);
  EXPECT_THROW(tok->decode({4}, true), Error);
  EXPECT_THROW(make_tokenizer(json{{"version", "1.0"}}), Error);  // no model
  EXPECT_THROW(HfTokenizer("{", "x", std::nullopt), Error);
}

// Words "x<n>" over digits with merges for every digit pair: each word is a BPE cache entry.
json digit_pair_tokenizer() {
  std::vector<std::string> tokens = {"x"};
  std::vector<std::pair<std::string, std::string>> merges;
  for (char a = '0'; a <= '9'; ++a) tokens.push_back(std::string(1, a));
  for (char a = '0'; a <= '9'; ++a) {
    for (char b = '0'; b <= '9'; ++b) {
      tokens.push_back(std::string{a, b});
      merges.push_back({std::string(1, a), std::string(1, b)});
    }
  }
  json j = tokenizer_json(bpe_model(tokens, merges));
  j["pre_tokenizer"] = {{"type", "WhitespaceSplit"}};
  return j;
}

// Ids of "x<digits>" by brute-force BPE: repeatedly merge the adjacent pair of single digits
// with the lowest rank (rank = 10 * a + b), leftmost on ties; a merged pair never merges again.
Ids word_ids(const std::string& digits) {
  std::vector<std::string> symbols;
  for (char c : digits) symbols.push_back(std::string(1, c));
  while (true) {
    int best = -1;
    int best_rank = 1 << 30;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      if (symbols[i].size() != 1 || symbols[i + 1].size() != 1) continue;
      const int rank = 10 * (symbols[i][0] - '0') + (symbols[i + 1][0] - '0');
      if (rank < best_rank) {
        best_rank = rank;
        best = static_cast<int>(i);
      }
    }
    if (best < 0) break;
    symbols[best] += symbols[best + 1];
    symbols.erase(symbols.begin() + best + 1);
  }
  Ids ids = {0};
  for (const std::string& s : symbols) {
    ids.push_back(s.size() == 1 ? 1 + (s[0] - '0') : 11 + 10 * (s[0] - '0') + (s[1] - '0'));
  }
  return ids;
}

TEST(HfTokenizer, CacheOverflowAndConcurrentCallsStayCorrect) {
  auto tok = make_tokenizer(digit_pair_tokenizer());
  // More distinct words than the cache holds: it is emptied and refilled on the way.
  for (int n = 0; n < 70000; ++n) {
    const std::string digits = std::to_string(n * 7919 % 1000003);
    ASSERT_EQ(tok->encode("x" + digits, false), word_ids(digits)) << digits;
  }
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int n = t; n < 20000; n += 3) {
        const std::string digits = std::to_string(n * 104729 % 999983);
        if (tok->encode("x" + digits, false) != word_ids(digits)) ++mismatches;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(HfTokenizer, LoadTokenizerPrefersTokenizerJson) {
  const std::string dir = test_util::make_temp_dir();
  test_util::write_file(std::filesystem::path(dir) / "tokenizer.json",
                        tokenizer_json(char_model()).dump());
  auto tok = load_tokenizer(dir);
  EXPECT_NE(dynamic_cast<HfTokenizer*>(tok.get()), nullptr);
  EXPECT_EQ(tok->encode("cab", true), (Ids{2, 0, 1}));
  EXPECT_THROW(load_tokenizer(test_util::make_temp_dir()), Error);
}

}  // namespace
}  // namespace llmcore
