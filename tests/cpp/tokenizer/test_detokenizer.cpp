// IncrementalDetokenizer: streamed text against whole-sequence sentencepiece decodes, and stop
// strings against a brute-force search over the same text growing delta by delta.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "tokenizer/detokenizer.h"
#include "tokenizer/sp_test_model.h"
#include "tokenizer/tokenizer.h"

namespace llmcore {
namespace {

using test_util::make_checkpoint;
using test_util::naive_valid_utf8;
using test_util::sp_decode;
using test_util::sp_encode;
using test_util::sp_id;
using Ids = std::vector<int32_t>;

const std::string kFffd = "\xEF\xBF\xBD";

const std::vector<std::string> kTexts = {
    "the model reads tokens 12345.",
    "Hello world, this engine streams text",
    "中文测试文本 and 我们的模型",
    "emoji 😀 then 🎉 and 🚀 done",
    "rare 龘 char, Ωmega and straße",
    "two  spaces and\ttab\nnew line",
    "日本語のテキスト",
    "😀😀🎉",
    "x",
};

Ids concat(const Ids& a, const Ids& b) {
  Ids out = a;
  out.insert(out.end(), b.begin(), b.end());
  return out;
}

// Everything one streamed sequence produced.
struct Stream {
  std::vector<std::string> deltas;  // one per append() call, then flush() when not stopped
  std::string shown;                // concatenation of deltas
  std::string output_text;
  bool stopped = false;
  std::string stop_str;
  size_t num_appended = 0;
};

Stream stream(const Tokenizer& tok, const Ids& prompt, const Ids& output, bool skip,
              std::vector<std::string> stop = {}, bool include = false) {
  IncrementalDetokenizer detok(tok, prompt, skip, std::move(stop), include);
  Stream s;
  for (int32_t id : output) {
    const auto update = detok.append(id);
    ++s.num_appended;
    s.deltas.push_back(update.text_delta);
    s.shown += update.text_delta;
    EXPECT_TRUE(naive_valid_utf8(update.text_delta)) << "delta " << s.num_appended;
    EXPECT_EQ(detok.output_text().compare(0, s.shown.size(), s.shown), 0)
        << "shown text is not a prefix";
    if (update.stopped) {
      s.stopped = true;
      s.stop_str = update.stop_str;
      EXPECT_TRUE(detok.stopped());
      break;
    }
  }
  if (!s.stopped) {
    s.deltas.push_back(detok.flush());
    s.shown += s.deltas.back();
    EXPECT_TRUE(naive_valid_utf8(s.deltas.back()));
    if (detok.stopped()) s.stopped = true;
  }
  s.output_text = detok.output_text();
  return s;
}

// What streaming should show: decode(prompt + output) minus decode(prompt), done by
// sentencepiece itself on the ids without control tokens (sentencepiece drops those).
std::string expected_stream_text(const Ids& prompt, const Ids& output) {
  const std::string before = sp_decode(prompt);
  const std::string all = sp_decode(concat(prompt, output));
  EXPECT_EQ(all.compare(0, before.size(), before), 0);
  return all.substr(before.size());
}

bool is_continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// The largest character start <= pos (or the text end).
size_t naive_floor_boundary(const std::string& text, size_t pos) {
  if (pos >= text.size()) return text.size();
  while (pos > 0 && is_continuation(text[pos])) --pos;
  return pos;
}

// Cut position for shown text when `hold` bytes are held back: back to a character start.
size_t naive_ready_length(const std::string& text, size_t hold) {
  return naive_floor_boundary(text, text.size() > hold ? text.size() - hold : 0);
}

class DetokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override { tok_ = load_tokenizer(make_checkpoint()); }
  std::vector<Ids> prompts() const {
    return {{},
            tok_->encode("The prompt:", true),
            tok_->encode("中文", true),
            tok_->encode("see 😀", false),
            sp_encode("a b c d e f g h i j")};
  }
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(DetokenizerTest, StreamedTextEqualsWholeDecode) {
  for (const Ids& prompt : prompts()) {
    for (const std::string& text : kTexts) {
      const Ids output = tok_->encode(text, false);
      const Stream s = stream(*tok_, prompt, output, /*skip=*/true);
      const std::string expected = expected_stream_text(prompt, output);
      EXPECT_EQ(s.shown, expected) << text;
      EXPECT_EQ(s.output_text, expected) << text;
      EXPECT_FALSE(s.stopped);
      EXPECT_EQ(s.deltas.back(), "") << "nothing should be left for flush()";
      if (prompt.empty()) {
        EXPECT_EQ(s.shown, text);
      }
    }
  }
}

TEST_F(DetokenizerTest, ShownSpecialTokensWithoutSkip) {
  const Ids prompt = tok_->encode("The prompt:", true);  // starts with <s>
  const Ids body = sp_encode("the model reads 中文");
  const Ids output = concat(concat(body, {2}), sp_encode("tokens"));
  const Stream skipped = stream(*tok_, prompt, output, /*skip=*/true);
  // With the special token gone, the text reads as if it never came (runs are not split).
  EXPECT_EQ(skipped.shown, expected_stream_text(prompt, concat(body, sp_encode("tokens"))));
  EXPECT_EQ(skipped.deltas[body.size()], "");
  const Stream shown = stream(*tok_, prompt, output, /*skip=*/false);
  EXPECT_EQ(shown.deltas[body.size()], "</s>");
  // After a special token, sentencepiece starts a new run and drops its leading space.
  EXPECT_EQ(shown.shown, expected_stream_text(prompt, body) + "</s>" + "tokens");
}

TEST_F(DetokenizerTest, ByteFallbackCharactersComeOutWhole) {
  const Ids bytes = {sp_id("<0xF0>"), sp_id("<0x9F>"), sp_id("<0x98>"), sp_id("<0x80>")};  // 😀
  const Stream alone = stream(*tok_, {}, bytes, true);
  EXPECT_EQ(alone.deltas, (std::vector<std::string>{"", "", "", "\xF0\x9F\x98\x80", ""}));
  const Ids output = concat({sp_id("\xE2\x96\x81")}, bytes);
  const Stream after_prompt = stream(*tok_, sp_encode("hi"), output, true);
  EXPECT_EQ(after_prompt.deltas,
            (std::vector<std::string>{" ", "", "", "", "\xF0\x9F\x98\x80", ""}));
}

TEST_F(DetokenizerTest, FlushReleasesAnIncompleteCharacterAsReplacementChar) {
  const Ids output = concat(sp_encode("the"), {sp_id("<0xE4>"), sp_id("<0xB8>")});
  const Stream s = stream(*tok_, {}, output, true);
  EXPECT_EQ(s.deltas[0], "the");
  EXPECT_EQ(s.deltas[1], "");
  EXPECT_EQ(s.deltas[2], "");
  EXPECT_EQ(s.deltas[3], sp_decode(output).substr(3));  // what sentencepiece makes of E4 B8
  EXPECT_EQ(s.output_text, sp_decode(output));
  EXPECT_NE(s.output_text.find(kFffd), std::string::npos);
}

TEST_F(DetokenizerTest, PromptEndingInsideACharacter) {
  // The prompt holds the first two bytes of 中 (E4 B8 AD); the output completes it.
  const Ids prompt = {sp_id("<0xE4>"), sp_id("<0xB8>")};
  const Ids output = concat({sp_id("<0xAD>")}, sp_encode("the"));
  const Stream s = stream(*tok_, prompt, output, true);
  EXPECT_EQ(s.deltas[0], "\xE4\xB8\xAD");
  EXPECT_EQ(s.shown, "\xE4\xB8\xAD the");
}

// Text deltas of a stream with no stop strings, flush() included: the units stop strings see.
std::vector<std::string> text_steps(const Tokenizer& tok, const Ids& prompt, const Ids& output,
                                    bool skip) {
  return stream(tok, prompt, output, skip).deltas;
}

struct ExpectedStop {
  bool stopped = false;
  std::string text;
  std::string stop_str;
  size_t num_steps = 0;  // deltas consumed, flush() counted as one
};

// Brute force: after each step, every occurrence of every stop string that ends in the new
// text; the leftmost wins, the first listed among equals.
ExpectedStop brute_force_stop(const std::vector<std::string>& steps,
                              const std::vector<std::string>& stops, bool include) {
  ExpectedStop e;
  std::string text;
  for (size_t k = 0; k < steps.size(); ++k) {
    const size_t old_size = text.size();
    text += steps[k];
    size_t best_pos = std::string::npos;
    size_t best = 0;
    for (size_t i = 0; i < stops.size(); ++i) {
      for (size_t p = 0; p + stops[i].size() <= text.size(); ++p) {
        if (p + stops[i].size() > old_size && text.compare(p, stops[i].size(), stops[i]) == 0 &&
            p < best_pos) {
          best_pos = p;
          best = i;
        }
      }
    }
    if (best_pos != std::string::npos) {
      e.stopped = true;
      e.stop_str = stops[best];
      e.text = text.substr(0, include ? best_pos + stops[best].size() : best_pos);
      e.num_steps = k + 1;
      return e;
    }
  }
  e.text = text;
  e.num_steps = steps.size();
  return e;
}

void expect_stop_result(const Stream& s, const ExpectedStop& e, const std::string& label) {
  EXPECT_EQ(s.stopped, e.stopped) << label;
  EXPECT_EQ(s.shown, e.text) << label;
  EXPECT_EQ(s.output_text, e.text) << label;
  if (e.stopped) {
    EXPECT_EQ(s.stop_str, e.stop_str) << label;
    EXPECT_EQ(s.deltas.size(), e.num_steps) << label;
  }
}

TEST_F(DetokenizerTest, StopStringSpanningTokenBoundaries) {
  const Ids prompt = tok_->encode("The prompt:", true);
  int checked = 0;
  for (const std::string& text : kTexts) {
    const Ids output = tok_->encode(text, false);
    const std::vector<std::string> steps = text_steps(*tok_, prompt, output, true);
    // Stop strings made of the last character of one delta and the first of the next.
    for (size_t k = 0; k + 1 < steps.size(); ++k) {
      size_t next = k + 1;
      while (next < steps.size() && steps[next].empty()) ++next;
      if (steps[k].empty() || next == steps.size()) continue;
      const size_t last_start = naive_ready_length(steps[k], 1);
      size_t first_len = 1;
      while (first_len < steps[next].size() && is_continuation(steps[next][first_len])) ++first_len;
      const std::string stop = steps[k].substr(last_start) + steps[next].substr(0, first_len);
      for (bool include : {false, true}) {
        const Stream s = stream(*tok_, prompt, output, true, {stop}, include);
        // One stop string: its first occurrence in the whole text is the one found.
        std::string full;
        for (const auto& d : steps) full += d;
        const size_t pos = full.find(stop);
        ASSERT_NE(pos, std::string::npos);
        EXPECT_TRUE(s.stopped);
        EXPECT_EQ(s.stop_str, stop);
        EXPECT_EQ(s.shown, full.substr(0, include ? pos + stop.size() : pos))
            << text << " / " << stop;
        EXPECT_EQ(s.output_text, s.shown);
        expect_stop_result(s, brute_force_stop(steps, {stop}, include), text + " / " + stop);
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 40);
}

TEST_F(DetokenizerTest, EarliestMatchWins) {
  const std::string text = "the model reads tokens 12345.";
  const Ids output = tok_->encode(text, false);
  for (bool include : {false, true}) {
    const Stream a = stream(*tok_, {}, output, true, {"tokens", "model", "12"}, include);
    EXPECT_TRUE(a.stopped);
    EXPECT_EQ(a.stop_str, "model");
    EXPECT_EQ(a.shown, include ? "the model" : "the ");
  }
}

TEST_F(DetokenizerTest, IncludeStopStrCutsTextAfterTheMatchAndHoldsNothingBack) {
  const std::string text = "the model reads tokens 12345.";
  const Ids output = tok_->encode(text, false);
  const std::vector<std::string> steps = text_steps(*tok_, {}, output, true);
  const Stream s = stream(*tok_, {}, output, true, {"mod"}, true);
  EXPECT_EQ(s.shown, "the mod");
  // Before the match every delta is shown as soon as it is decoded.
  for (size_t k = 0; k + 1 < s.deltas.size(); ++k) EXPECT_EQ(s.deltas[k], steps[k]);
}

TEST_F(DetokenizerTest, HoldBackWithholdsAPossibleStopPrefixUntilFlush) {
  for (const std::string& text : kTexts) {
    const Ids output = tok_->encode(text, false);
    for (const std::string stop : {"zzzz", "\xE9\xBE\x98\xE9\xBE\x98", "qj"}) {  // never occur
      IncrementalDetokenizer detok(*tok_, {}, true, {stop}, false);
      std::string shown;
      for (int32_t id : output) {
        shown += detok.append(id).text_delta;
        // Shown: all but the last stop.size() - 1 bytes, cut back to a character start.
        ASSERT_EQ(shown, detok.output_text().substr(
                             0, naive_ready_length(detok.output_text(), stop.size() - 1)))
            << text;
      }
      const std::string rest = detok.flush();
      EXPECT_EQ(shown + rest, text);
      EXPECT_FALSE(detok.stopped());
      if (text.size() >= stop.size()) {
        EXPECT_FALSE(rest.empty()) << text;
      }
    }
  }
}

TEST_F(DetokenizerTest, HoldBackNeverSplitsACharacter) {
  // "中文" is 6 bytes; holding 2 bytes back must hold all of "文" (3 bytes).
  IncrementalDetokenizer detok(*tok_, {}, true, {"xyz"}, false);
  std::string shown;
  for (int32_t id : sp_encode("中文")) shown += detok.append(id).text_delta;
  EXPECT_EQ(detok.output_text(), "中文");
  EXPECT_EQ(shown, "中");
  EXPECT_EQ(detok.flush(), "文");
}

TEST_F(DetokenizerTest, StopStringInTheFirstToken) {
  const Ids output = sp_encode("the model");
  for (const Ids& prompt : {Ids{}, tok_->encode("hi", true)}) {
    const std::string first = text_steps(*tok_, prompt, output, true)[0];  // "the" or " the"
    ASSERT_GE(first.size(), 2u);
    const Stream s = stream(*tok_, prompt, output, true, {first.substr(1)}, false);
    EXPECT_TRUE(s.stopped);
    EXPECT_EQ(s.deltas.size(), 1u);
    EXPECT_EQ(s.shown, first.substr(0, 1));
    const Stream whole = stream(*tok_, prompt, output, true, {first}, false);
    EXPECT_EQ(whole.deltas, std::vector<std::string>{""});
    EXPECT_EQ(whole.output_text, "");
    const Stream kept = stream(*tok_, prompt, output, true, {first}, true);
    EXPECT_EQ(kept.deltas, std::vector<std::string>{first});
  }
}

TEST_F(DetokenizerTest, RandomStopStringsMatchBruteForce) {
  std::mt19937 rng(99);
  const std::vector<std::string> words = {"the", "model", "reads",  "tokens", "42",
                                          "7",   "中文",  "测试",   "😀",     "🎉",
                                          "龘",  "Ω",     "straße", "x",      "\n"};
  int num_stopped = 0;
  for (int iter = 0; iter < 300; ++iter) {
    std::string text;
    const int num_words = 1 + rng() % 10;
    for (int w = 0; w < num_words; ++w) text += (w ? " " : "") + words[rng() % words.size()];
    const bool skip = rng() % 2;
    const bool include = rng() % 2;
    const Ids prompt = (rng() % 2) ? tok_->encode("The prompt:", true) : Ids{};
    Ids output = tok_->encode(text, false);
    if (rng() % 3 == 0) output.push_back(2);  // EOS: "</s>" text unless skipped
    const std::vector<std::string> steps = text_steps(*tok_, prompt, output, skip);
    std::string full;
    for (const auto& d : steps) full += d;
    // Stop strings: substrings of the text on character boundaries, and one absent string.
    std::vector<std::string> stops = {"absent"};
    const int num_stops = rng() % 3;
    for (int k = 0; k < num_stops && !full.empty(); ++k) {
      const size_t a = naive_floor_boundary(full, rng() % full.size());
      size_t b = naive_floor_boundary(full, std::min(full.size(), a + 1 + rng() % 7));
      if (b <= a)
        b = naive_floor_boundary(full, a + 4) > a ? naive_floor_boundary(full, a + 4) : full.size();
      stops.push_back(full.substr(a, b - a));
    }
    std::shuffle(stops.begin(), stops.end(), rng);
    const Stream s = stream(*tok_, prompt, output, skip, stops, include);
    const ExpectedStop e = brute_force_stop(steps, stops, include);
    expect_stop_result(s, e, "iter " + std::to_string(iter) + ": " + text);
    num_stopped += e.stopped;
  }
  EXPECT_GT(num_stopped, 100);
}

TEST_F(DetokenizerTest, AppendAfterStopAddsNothing) {
  IncrementalDetokenizer detok(*tok_, {}, true, {"model"}, false);
  IncrementalDetokenizer::Update last;
  for (int32_t id : sp_encode("the model reads")) {
    last = detok.append(id);
    if (last.stopped) break;
  }
  ASSERT_TRUE(last.stopped);
  const auto after = detok.append(sp_encode("tokens")[0]);
  EXPECT_TRUE(after.stopped);
  EXPECT_EQ(after.stop_str, "model");
  EXPECT_EQ(after.text_delta, "");
  EXPECT_EQ(detok.flush(), "");
  EXPECT_EQ(detok.output_text(), "the ");
}

TEST_F(DetokenizerTest, EmptyStopStringIsAValueError) {
  try {
    IncrementalDetokenizer detok(*tok_, {}, true, {"ok", ""}, false);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kValue);
    EXPECT_NE(std::string(e.what()).find("stop[1]"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace llmcore

namespace llmcore {
namespace {

// A prompt given as ids may use a model's padded embedding rows, past the tokenizer's
// vocabulary: those ids have no text and must not break decoding of the output.
TEST_F(DetokenizerTest, PromptIdsPastTheVocabularyAreSkipped) {
  const int32_t vocab = static_cast<int32_t>(tok_->vocab_size());
  const Ids real = tok_->encode("The prompt:", true);
  Ids padded = real;
  padded.push_back(vocab);
  padded.push_back(vocab + 7);
  const Ids output = tok_->encode(" and the rest", false);
  const Stream with_padding = stream(*tok_, padded, output, /*skip=*/true);
  const Stream without = stream(*tok_, real, output, /*skip=*/true);
  EXPECT_EQ(with_padding.shown, without.shown);
  EXPECT_EQ(with_padding.output_text, without.output_text);
}

}  // namespace
}  // namespace llmcore
