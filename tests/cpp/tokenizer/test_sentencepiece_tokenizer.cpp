// SentencePieceTokenizer against the sentencepiece library itself (the reference Hugging Face's
// slow Llama tokenizer and the Python `sentencepiece` package both wrap), with the BOS/EOS,
// added-token and special-token rules applied by hand in each test.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "tokenizer/sp_test_model.h"
#include "tokenizer/tokenizer.h"

namespace llmcore {
namespace {

using test_util::make_checkpoint;
using test_util::reference_sp;
using test_util::sp_decode;
using test_util::sp_encode;
using test_util::sp_id;
using Ids = std::vector<int32_t>;

const std::string kFffd = "\xEF\xBF\xBD";

// Texts that survive encode -> decode unchanged with the identity normalizer (no leading space:
// sentencepiece drops the dummy-prefix space when decoding).
const std::vector<std::string> kSamples = {
    "the model reads tokens 12345.",
    "Hello world",
    "中文测试文本",
    "我们的模型 streams text",
    "emoji 😀 and 🎉 and 🚀!",
    "rare 龘 char and Ωmega",
    "ünïcödé straße",
    "numbers 0 1 2 3 4 5 6 7 8 9 42",
    "two  spaces and\ttab\nnew line",
    "日本語のテキスト ok",
    "a",
    "The tokenizer counts 99 blocks of memory.",
};

Ids concat(std::initializer_list<Ids> parts) {
  Ids out;
  for (const Ids& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// Runs f and expects a ValueError whose message contains every one of `parts`.
template <typename F>
void expect_value_error(F f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kValue) << e.what();
    for (const std::string& part : parts) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos)
          << "message \"" << e.what() << "\" lacks \"" << part << "\"";
    }
  }
}

// Undoes a segmentation by hand: "▁" is a space, "<0xNN>" one byte, any other piece itself.
std::string join_pieces(const Tokenizer& tok, const Ids& ids) {
  std::string out;
  for (int32_t id : ids) {
    std::string piece = tok.id_to_token(id);
    if (piece.size() == 6 && piece.compare(0, 3, "<0x") == 0 && piece[5] == '>') {
      out += static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16));
      continue;
    }
    for (size_t pos; (pos = piece.find("\xE2\x96\x81")) != std::string::npos;)
      piece.replace(pos, 3, " ");
    out += piece;
  }
  return out;
}

TEST(SentencePieceTokenizer, WithoutConfigEncodesLikeSentencepieceWithBos) {
  auto tok = load_tokenizer(make_checkpoint());
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->bos_token_id(), 1);
  EXPECT_EQ(tok->eos_token_id(), 2);
  for (const std::string& s : kSamples) {
    EXPECT_EQ(tok->encode(s, false), sp_encode(s)) << s;
    EXPECT_EQ(tok->encode(s, true), concat({{1}, sp_encode(s)})) << s;
  }
  EXPECT_EQ(tok->encode("", true), Ids{1});
  EXPECT_TRUE(tok->encode("", false).empty());
  // Without a tokenizer_config.json nothing is an added token: "<s>" in text is plain text.
  const Ids literal = sp_encode("a <s> b");
  EXPECT_EQ(tok->encode("a <s> b", false), literal);
  EXPECT_EQ(std::count(literal.begin(), literal.end(), 1), 0);
}

TEST(SentencePieceTokenizer, EncodingIsASegmentationOfTheText) {
  auto tok = load_tokenizer(make_checkpoint());
  bool saw_byte_fallback = false;
  for (const std::string& s : kSamples) {
    const Ids ids = tok->encode(s, false);
    // The dummy prefix adds one space in front.
    EXPECT_EQ(join_pieces(*tok, ids), " " + s) << s;
    for (int32_t id : ids) saw_byte_fallback |= tok->id_to_token(id).rfind("<0x", 0) == 0;
  }
  EXPECT_TRUE(saw_byte_fallback);
  const Ids emoji = tok->encode("😀", false);  // U+1F600 = F0 9F 98 80, rare: byte pieces
  const Ids expected = {sp_id("\xE2\x96\x81"), sp_id("<0xF0>"), sp_id("<0x9F>"), sp_id("<0x98>"),
                        sp_id("<0x80>")};
  EXPECT_EQ(emoji, expected);
}

TEST(SentencePieceTokenizer, DecodeInvertsEncode) {
  auto tok = load_tokenizer(make_checkpoint());
  for (const std::string& s : kSamples) {
    EXPECT_EQ(tok->decode(tok->encode(s, true), true), s) << s;
    EXPECT_EQ(tok->decode(tok->encode(s, false), false), s) << s;
  }
}

TEST(SentencePieceTokenizer, ConfigControlsBosAndEos) {
  const std::string s = "the model reads 42 tokens";
  {
    auto tok =
        load_tokenizer(make_checkpoint(R"({"add_bos_token": false, "add_eos_token": true})"));
    EXPECT_EQ(tok->encode(s, true), concat({sp_encode(s), {2}}));
    EXPECT_EQ(tok->encode(s, false), sp_encode(s));
  }
  {
    auto tok = load_tokenizer(make_checkpoint(R"({"add_eos_token": true})"));
    EXPECT_EQ(tok->encode(s, true), concat({{1}, sp_encode(s), {2}}));
  }
  {
    // Object and string forms; any vocabulary token may serve.
    auto tok = load_tokenizer(make_checkpoint(
        R"({"bos_token": {"content": "<ctrl>", "special": true}, "eos_token": "<pad>"})"));
    EXPECT_EQ(tok->bos_token_id(), sp_id("<ctrl>"));
    EXPECT_EQ(tok->eos_token_id(), 3);
    EXPECT_EQ(tok->encode(s, true), concat({{sp_id("<ctrl>")}, sp_encode(s)}));
  }
  {
    auto tok = load_tokenizer(make_checkpoint(R"({"bos_token": null, "add_bos_token": true})"));
    EXPECT_EQ(tok->bos_token_id(), -1);
    EXPECT_EQ(tok->eos_token_id(), 2);  // absent key: the model's eos_id()
    EXPECT_EQ(tok->encode(s, true), sp_encode(s));
  }
}

TEST(SentencePieceTokenizer, MalformedConfigIsAValueError) {
  expect_value_error([] { load_tokenizer(make_checkpoint(R"({"bos_token": "<nope>"})")); },
                     {"bos_token", "<nope>"});
  expect_value_error([] { load_tokenizer(make_checkpoint("{not json")); },
                     {"tokenizer_config.json", "not valid JSON"});
  expect_value_error([] { load_tokenizer(make_checkpoint(R"({"add_bos_token": "yes"})")); },
                     {"add_bos_token", "\"yes\""});
  expect_value_error(
      [] {
        load_tokenizer(make_checkpoint(R"({"added_tokens_decoder": {"x1": {"content": "a"}}})"));
      },
      {"added_tokens_decoder", "x1"});
}

// A chat-model layout: the sentencepiece specials listed again, and new tokens above the model.
const char* kChatConfig = R"({
  "add_bos_token": true,
  "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
  "added_tokens_decoder": {
    "0": {"content": "<unk>", "special": true},
    "1": {"content": "<s>", "special": true},
    "2": {"content": "</s>", "special": true},
    "512": {"content": "<|im_start|>", "special": true},
    "513": {"content": "<|im_end|>", "special": true},
    "514": {"content": "<|note|>", "special": false}
  }
})";

TEST(SentencePieceTokenizer, AddedTokensExtendTheVocabulary) {
  auto tok = load_tokenizer(make_checkpoint(kChatConfig));
  EXPECT_EQ(tok->vocab_size(), 515);
  EXPECT_EQ(tok->token_to_id("<|im_start|>"), 512);
  EXPECT_EQ(tok->token_to_id("<|note|>"), 514);
  EXPECT_EQ(tok->id_to_token(513), "<|im_end|>");
  EXPECT_EQ(tok->id_to_token(1), "<s>");
  EXPECT_TRUE(tok->is_special(512));
  EXPECT_TRUE(tok->is_special(513));
  EXPECT_FALSE(tok->is_special(514));
  EXPECT_TRUE(tok->is_special(0));
  EXPECT_TRUE(tok->is_special(1));
  EXPECT_TRUE(tok->is_special(sp_id("<ctrl>")));  // a control piece the config does not list
  EXPECT_FALSE(tok->is_special(sp_id("<user>")));
  EXPECT_FALSE(tok->is_special(sp_encode("the")[0]));
  EXPECT_FALSE(tok->is_special(-1));
  EXPECT_FALSE(tok->is_special(515));
}

TEST(SentencePieceTokenizer, AddedTokensAreMatchedInTextBeforeSentencepiece) {
  auto tok = load_tokenizer(make_checkpoint(kChatConfig));
  // Hugging Face legacy mode: every text segment gets sentencepiece's own dummy prefix.
  EXPECT_EQ(tok->encode("<|im_start|>user hi<|im_end|>\n<|note|>x", false),
            concat({{512}, sp_encode("user hi"), {513}, sp_encode("\n"), {514}, sp_encode("x")}));
  EXPECT_EQ(tok->encode("<s>hello</s>", true), concat({{1, 1}, sp_encode("hello"), {2}}));
  EXPECT_EQ(tok->encode("a <|im_start|", false), sp_encode("a <|im_start|"));
}

TEST(SentencePieceTokenizer, AddedTokenMatchingRules) {
  auto tok = load_tokenizer(make_checkpoint(R"({"added_tokens_decoder": {
    "512": {"content": "<|a|>", "special": true},
    "513": {"content": "<|a|>b", "special": true},
    "514": {"content": "<R>", "special": true, "rstrip": true},
    "515": {"content": "<L>", "special": true, "lstrip": true},
    "516": {"content": "word", "special": false, "single_word": true}}})"));
  // Leftmost match first, the longest among those starting there.
  EXPECT_EQ(tok->encode("x<|a|>by<|a|>", false),
            concat({sp_encode("x"), {513}, sp_encode("y"), {512}}));
  EXPECT_EQ(tok->encode("hi <R>  \tthere", false),
            concat({sp_encode("hi "), {514}, sp_encode("there")}));
  EXPECT_EQ(tok->encode("hi \t <L> there", false),
            concat({sp_encode("hi"), {515}, sp_encode(" there")}));
  EXPECT_EQ(tok->encode("a word b", false), concat({sp_encode("a "), {516}, sp_encode(" b")}));
  EXPECT_EQ(tok->encode("word", false), Ids{516});
  EXPECT_EQ(tok->encode("swordfish", false), sp_encode("swordfish"));
  EXPECT_EQ(tok->encode("word,", false), sp_encode("word,"));
}

TEST(SentencePieceTokenizer, NamedSpecialTokensAreSpecialAndMatched) {
  // <user> is an ordinary (user-defined) piece until the config names it special.
  auto tok = load_tokenizer(make_checkpoint(R"({"additional_special_tokens": ["<user>"],
                                                "pad_token": {"content": "<pad>"}})"));
  const int32_t user = sp_id("<user>");
  EXPECT_TRUE(tok->is_special(user));
  EXPECT_TRUE(tok->is_special(3));
  const Ids ids = tok->encode("a<user>b", false);
  EXPECT_EQ(ids, concat({sp_encode("a"), {user}, sp_encode("b")}));
  EXPECT_EQ(tok->decode(ids, true), sp_decode(concat({sp_encode("a"), sp_encode("b")})));
  EXPECT_EQ(tok->decode(ids, false), "a<user>b");
}

TEST(SentencePieceTokenizer, DecodeShowsOrSkipsSpecialTokens) {
  auto tok = load_tokenizer(make_checkpoint(kChatConfig));
  const Ids user = sp_encode("user hi");
  const Ids x = sp_encode("x");
  const Ids ids = concat({{1, 512}, user, {513, 514}, x, {2}});
  // Normal runs decode on their own, so each drops its dummy-prefix space.
  EXPECT_EQ(tok->decode(ids, false), "<s><|im_start|>user hi<|im_end|><|note|>x</s>");
  EXPECT_EQ(tok->decode(ids, true), "user hi<|note|>x");
  // Skipped tokens do not split a run: this reads as if they were never there.
  const Ids a = sp_encode("the model");
  const Ids b = sp_encode("reads");
  EXPECT_EQ(tok->decode(concat({a, {513}, b}), true), "the model reads");
  EXPECT_EQ(tok->decode(concat({a, {513}, b}), false), "the model<|im_end|>reads");
}

TEST(SentencePieceTokenizer, DecodeWithoutConfigUsesPiecesForControlAndUnknown) {
  auto tok = load_tokenizer(make_checkpoint());
  const Ids text = sp_encode("hello 中文");
  EXPECT_EQ(tok->decode(concat({{1}, text, {2}}), true), "hello 中文");
  EXPECT_EQ(tok->decode(concat({{1}, text, {2}}), false), "<s>hello 中文</s>");
  EXPECT_EQ(tok->decode({0}, false), "<unk>");  // sentencepiece itself would give " ⁇ "
  EXPECT_EQ(tok->decode({0}, true), "");
  EXPECT_EQ(tok->decode({3, sp_id("<ctrl>")}, false), "<pad><ctrl>");
  EXPECT_EQ(tok->decode({3, sp_id("<ctrl>")}, true), "");
  // A user-defined symbol is ordinary text.
  const Ids with_user = tok->encode("a<user>b", false);
  EXPECT_NE(std::find(with_user.begin(), with_user.end(), sp_id("<user>")), with_user.end());
  EXPECT_EQ(tok->decode(with_user, true), "a<user>b");
}

TEST(SentencePieceTokenizer, IncompleteBytePiecesDecodeToReplacementChar) {
  auto tok = load_tokenizer(make_checkpoint());
  const int32_t e4 = sp_id("<0xE4>"), b8 = sp_id("<0xB8>"), ad = sp_id("<0xAD>");
  EXPECT_EQ(tok->decode({e4}, true), kFffd);
  EXPECT_EQ(tok->decode({e4, b8, ad}, true), "\xE4\xB8\xAD");  // 中
  EXPECT_EQ(tok->decode({e4, sp_id("<0x41>")}, true), kFffd + "A");
  const Ids the = sp_encode("the");
  EXPECT_EQ(tok->decode(concat({the, {e4}, the}), true), "the" + kFffd + " the");
  const std::string broken =
      tok->decode({sp_id("<0xF0>"), sp_id("<0x9F>"), sp_id("<0x41>")}, false);
  EXPECT_TRUE(test_util::naive_valid_utf8(broken));
  EXPECT_NE(broken.find(kFffd), std::string::npos);
  EXPECT_EQ(broken.substr(broken.size() - 1), "A");
}

TEST(SentencePieceTokenizer, TokenLookups) {
  auto tok = load_tokenizer(make_checkpoint());
  EXPECT_EQ(tok->token_to_id("<unk>"), 0);
  EXPECT_EQ(tok->token_to_id("</s>"), 2);
  EXPECT_EQ(tok->token_to_id("<0xE4>"), reference_sp().PieceToId("<0xE4>"));
  EXPECT_EQ(tok->token_to_id("no such piece at all"), -1);
  for (int id = 0; id < tok->vocab_size(); ++id) {
    ASSERT_EQ(tok->id_to_token(id), reference_sp().IdToPiece(id));
    ASSERT_EQ(tok->token_to_id(tok->id_to_token(id)), id);
  }
}

TEST(SentencePieceTokenizer, OutOfRangeIdsAreValueErrors) {
  auto tok = load_tokenizer(make_checkpoint());
  expect_value_error([&] { tok->decode({5, 512}, true); }, {"512", "vocab size 512"});
  expect_value_error([&] { tok->decode({-1}, false); }, {"-1", "vocab size 512"});
  expect_value_error([&] { tok->id_to_token(100000); }, {"100000", "512"});
  // An added token far above the model leaves a gap of ids that are not tokens.
  auto gap = load_tokenizer(make_checkpoint(
      R"({"added_tokens_decoder": {"600": {"content": "<far>", "special": true}}})"));
  EXPECT_EQ(gap->vocab_size(), 601);
  EXPECT_EQ(gap->decode({600}, false), "<far>");
  expect_value_error([&] { gap->decode({550}, false); }, {"550", "not in the vocabulary"});
}

TEST(SentencePieceTokenizer, LoadErrorsNameTheDirectory) {
  expect_value_error([] { load_tokenizer("/nonexistent/llmcore/ckpt"); },
                     {"/nonexistent/llmcore/ckpt"});
  const std::string empty = test_util::make_temp_dir();
  expect_value_error([&] { load_tokenizer(empty); }, {empty, "no tokenizer"});
  const std::string json_only = test_util::make_temp_dir();
  test_util::write_file(std::filesystem::path(json_only) / "tokenizer.json", "{}");
  // tokenizer.json is loaded when present (HfTokenizer); "{}" has no model.
  expect_value_error([&] { load_tokenizer(json_only); },
                     {json_only, "tokenizer.json", "missing field \"model\""});
  const std::string corrupt = test_util::make_temp_dir();
  test_util::write_file(std::filesystem::path(corrupt) / "tokenizer.model", "not a model");
  expect_value_error([&] { load_tokenizer(corrupt); }, {"tokenizer.model"});
}

TEST(SentencePieceTokenizer, ConcurrentCallsAgreeWithSerialOnes) {
  auto tok = load_tokenizer(make_checkpoint(kChatConfig));
  std::vector<Ids> encoded;
  std::vector<std::string> decoded;
  for (const std::string& s : kSamples) {
    encoded.push_back(tok->encode("<|im_start|>" + s, true));
    decoded.push_back(tok->decode(encoded.back(), false));
  }
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int iter = 0; iter < 300; ++iter) {
        const size_t i = (iter + t) % kSamples.size();
        if (tok->encode("<|im_start|>" + kSamples[i], true) != encoded[i]) ++mismatches;
        if (tok->decode(encoded[i], false) != decoded[i]) ++mismatches;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

}  // namespace
}  // namespace llmcore
