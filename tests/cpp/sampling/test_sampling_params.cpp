// SamplingParams::validate: every field with accepted and refused values, NaN and infinities
// included; a refusal is a ValueError whose message names the field and the offending value.
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "engine/sampling_params.h"

namespace llmcore {
namespace {

constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int64_t kVocab = 100;

struct Case {
  std::string what;                          // shown on failure
  std::function<void(SamplingParams&)> set;  // one change from the defaults
  int64_t vocab_size = kVocab;
  std::string field = "";   // refused cases: the message starts with this
  std::string value = "";   // refused cases: the message contains this
};

TEST(SamplingParamsValidate, DefaultsAreValid) {
  SamplingParams p;
  EXPECT_NO_THROW(p.validate());
  EXPECT_NO_THROW(p.validate(kVocab));
  EXPECT_FALSE(p.greedy());
}

TEST(SamplingParamsValidate, AcceptsEveryValueInRange) {
  const std::vector<Case> cases = {
      {"n=1", [](SamplingParams& p) { p.n = 1; }},
      {"n=256", [](SamplingParams& p) { p.n = 256; }},
      {"presence=-2", [](SamplingParams& p) { p.presence_penalty = -2.0; }},
      {"presence=2", [](SamplingParams& p) { p.presence_penalty = 2.0; }},
      {"frequency=-2", [](SamplingParams& p) { p.frequency_penalty = -2.0; }},
      {"frequency=2", [](SamplingParams& p) { p.frequency_penalty = 2.0; }},
      {"repetition=1e-6", [](SamplingParams& p) { p.repetition_penalty = 1e-6; }},
      {"repetition=1e6", [](SamplingParams& p) { p.repetition_penalty = 1e6; }},
      {"temperature=0", [](SamplingParams& p) { p.temperature = 0.0; }},
      {"temperature=100", [](SamplingParams& p) { p.temperature = 100.0; }},
      {"top_p=1", [](SamplingParams& p) { p.top_p = 1.0; }},
      {"top_p=1e-9", [](SamplingParams& p) { p.top_p = 1e-9; }},
      {"top_k=-1", [](SamplingParams& p) { p.top_k = -1; }},
      {"top_k=0", [](SamplingParams& p) { p.top_k = 0; }},
      {"top_k=1", [](SamplingParams& p) { p.top_k = 1; }},
      {"top_k beyond vocab", [](SamplingParams& p) { p.top_k = 1000; }},
      {"min_p=0", [](SamplingParams& p) { p.min_p = 0.0; }},
      {"min_p=1", [](SamplingParams& p) { p.min_p = 1.0; }},
      {"max_tokens=1", [](SamplingParams& p) { p.max_tokens = 1; }},
      {"max_tokens unset", [](SamplingParams& p) { p.max_tokens.reset(); }},
      {"min_tokens=max_tokens", [](SamplingParams& p) { p.min_tokens = 16; }},
      {"min_tokens without max_tokens",
       [](SamplingParams& p) {
         p.max_tokens.reset();
         p.min_tokens = 100000;
       }},
      {"logprobs=0", [](SamplingParams& p) { p.logprobs = 0; }},
      {"logprobs=max", [](SamplingParams& p) { p.logprobs = kMaxLogprobs; }},
      {"prompt_logprobs=0", [](SamplingParams& p) { p.prompt_logprobs = 0; }},
      {"prompt_logprobs=max", [](SamplingParams& p) { p.prompt_logprobs = kMaxLogprobs; }},
      {"stop", [](SamplingParams& p) { p.stop = {"a", "\n\n"}; }},
      {"stop_token_ids edges", [](SamplingParams& p) { p.stop_token_ids = {0, kVocab - 1}; }},
      {"stop_token_ids unchecked above without vocab",
       [](SamplingParams& p) { p.stop_token_ids = {1 << 30}; }, 0},
      {"logit_bias edges", [](SamplingParams& p) { p.logit_bias = {{0, -100.0}, {kVocab - 1, 100.0}}; }},
      {"logit_bias key unchecked above without vocab",
       [](SamplingParams& p) { p.logit_bias = {{1 << 30, 1.0}}; }, 0},
      {"seed min", [](SamplingParams& p) { p.seed = std::numeric_limits<int64_t>::min(); }},
      {"seed max", [](SamplingParams& p) { p.seed = std::numeric_limits<int64_t>::max(); }},
  };
  for (const Case& c : cases) {
    SamplingParams p;
    c.set(p);
    EXPECT_NO_THROW(p.validate(c.vocab_size)) << c.what;
  }
}

TEST(SamplingParamsValidate, RefusesEveryValueOutOfRange) {
  const std::vector<Case> cases = {
      {"n=0", [](SamplingParams& p) { p.n = 0; }, kVocab, "n ", "0"},
      {"n=-1", [](SamplingParams& p) { p.n = -1; }, kVocab, "n ", "-1"},
      {"presence nan", [](SamplingParams& p) { p.presence_penalty = kNan; }, kVocab, "presence_penalty", "nan"},
      {"presence inf", [](SamplingParams& p) { p.presence_penalty = kInf; }, kVocab, "presence_penalty", "inf"},
      {"presence -inf", [](SamplingParams& p) { p.presence_penalty = -kInf; }, kVocab, "presence_penalty", "-inf"},
      {"presence 2.5", [](SamplingParams& p) { p.presence_penalty = 2.5; }, kVocab, "presence_penalty", "2.5"},
      {"presence -2.5", [](SamplingParams& p) { p.presence_penalty = -2.5; }, kVocab, "presence_penalty", "-2.5"},
      {"frequency nan", [](SamplingParams& p) { p.frequency_penalty = kNan; }, kVocab, "frequency_penalty", "nan"},
      {"frequency inf", [](SamplingParams& p) { p.frequency_penalty = kInf; }, kVocab, "frequency_penalty", "inf"},
      {"frequency 2.5", [](SamplingParams& p) { p.frequency_penalty = 2.5; }, kVocab, "frequency_penalty", "2.5"},
      {"frequency -2.5", [](SamplingParams& p) { p.frequency_penalty = -2.5; }, kVocab, "frequency_penalty", "-2.5"},
      {"repetition 0", [](SamplingParams& p) { p.repetition_penalty = 0.0; }, kVocab, "repetition_penalty", "0"},
      {"repetition -1", [](SamplingParams& p) { p.repetition_penalty = -1.0; }, kVocab, "repetition_penalty", "-1"},
      {"repetition nan", [](SamplingParams& p) { p.repetition_penalty = kNan; }, kVocab, "repetition_penalty", "nan"},
      {"repetition inf", [](SamplingParams& p) { p.repetition_penalty = kInf; }, kVocab, "repetition_penalty", "inf"},
      {"temperature -0.1", [](SamplingParams& p) { p.temperature = -0.1; }, kVocab, "temperature", "-0.1"},
      {"temperature nan", [](SamplingParams& p) { p.temperature = kNan; }, kVocab, "temperature", "nan"},
      {"temperature inf", [](SamplingParams& p) { p.temperature = kInf; }, kVocab, "temperature", "inf"},
      {"temperature -inf", [](SamplingParams& p) { p.temperature = -kInf; }, kVocab, "temperature", "-inf"},
      {"top_p 0", [](SamplingParams& p) { p.top_p = 0.0; }, kVocab, "top_p", "0"},
      {"top_p -0.5", [](SamplingParams& p) { p.top_p = -0.5; }, kVocab, "top_p", "-0.5"},
      {"top_p 1.01", [](SamplingParams& p) { p.top_p = 1.01; }, kVocab, "top_p", "1.01"},
      {"top_p nan", [](SamplingParams& p) { p.top_p = kNan; }, kVocab, "top_p", "nan"},
      {"top_p inf", [](SamplingParams& p) { p.top_p = kInf; }, kVocab, "top_p", "inf"},
      {"top_k -2", [](SamplingParams& p) { p.top_k = -2; }, kVocab, "top_k", "-2"},
      {"top_k int min", [](SamplingParams& p) { p.top_k = std::numeric_limits<int>::min(); }, kVocab, "top_k",
       std::to_string(std::numeric_limits<int>::min())},
      {"min_p -0.01", [](SamplingParams& p) { p.min_p = -0.01; }, kVocab, "min_p", "-0.01"},
      {"min_p 1.5", [](SamplingParams& p) { p.min_p = 1.5; }, kVocab, "min_p", "1.5"},
      {"min_p nan", [](SamplingParams& p) { p.min_p = kNan; }, kVocab, "min_p", "nan"},
      {"min_p inf", [](SamplingParams& p) { p.min_p = kInf; }, kVocab, "min_p", "inf"},
      {"max_tokens 0", [](SamplingParams& p) { p.max_tokens = 0; }, kVocab, "max_tokens", "0"},
      {"max_tokens -5", [](SamplingParams& p) { p.max_tokens = -5; }, kVocab, "max_tokens", "-5"},
      {"min_tokens -1", [](SamplingParams& p) { p.min_tokens = -1; }, kVocab, "min_tokens", "-1"},
      {"min_tokens -1 without max_tokens",
       [](SamplingParams& p) {
         p.max_tokens.reset();
         p.min_tokens = -1;
       },
       kVocab, "min_tokens", "-1"},
      {"min_tokens > max_tokens", [](SamplingParams& p) { p.min_tokens = 17; }, kVocab, "min_tokens", "17"},
      {"logprobs -1", [](SamplingParams& p) { p.logprobs = -1; }, kVocab, "logprobs", "-1"},
      {"logprobs max+1", [](SamplingParams& p) { p.logprobs = kMaxLogprobs + 1; }, kVocab, "logprobs",
       std::to_string(kMaxLogprobs + 1)},
      {"prompt_logprobs -1", [](SamplingParams& p) { p.prompt_logprobs = -1; }, kVocab, "prompt_logprobs", "-1"},
      {"prompt_logprobs max+1", [](SamplingParams& p) { p.prompt_logprobs = kMaxLogprobs + 1; }, kVocab,
       "prompt_logprobs", std::to_string(kMaxLogprobs + 1)},
      {"stop empty", [](SamplingParams& p) { p.stop = {"ok", ""}; }, kVocab, "stop[1]", "\"\""},
      {"stop_token_ids = vocab", [](SamplingParams& p) { p.stop_token_ids = {3, kVocab}; }, kVocab,
       "stop_token_ids[1]", std::to_string(kVocab)},
      {"stop_token_ids negative", [](SamplingParams& p) { p.stop_token_ids = {-1}; }, kVocab, "stop_token_ids[0]",
       "-1"},
      {"stop_token_ids negative without vocab", [](SamplingParams& p) { p.stop_token_ids = {-7}; }, 0,
       "stop_token_ids[0]", "-7"},
      {"logit_bias key = vocab", [](SamplingParams& p) { p.logit_bias = {{kVocab, 1.0}}; }, kVocab, "logit_bias",
       std::to_string(kVocab)},
      {"logit_bias key negative", [](SamplingParams& p) { p.logit_bias = {{-3, 1.0}}; }, kVocab, "logit_bias", "-3"},
      {"logit_bias key negative without vocab", [](SamplingParams& p) { p.logit_bias = {{-3, 1.0}}; }, 0,
       "logit_bias", "-3"},
      {"logit_bias 100.5", [](SamplingParams& p) { p.logit_bias = {{5, 100.5}}; }, kVocab, "logit_bias[5]", "100.5"},
      {"logit_bias -101", [](SamplingParams& p) { p.logit_bias = {{5, -101.0}}; }, kVocab, "logit_bias[5]", "-101"},
      {"logit_bias nan", [](SamplingParams& p) { p.logit_bias = {{5, kNan}}; }, kVocab, "logit_bias[5]", "nan"},
      {"logit_bias inf", [](SamplingParams& p) { p.logit_bias = {{5, kInf}}; }, kVocab, "logit_bias[5]", "inf"},
      {"logit_bias -inf", [](SamplingParams& p) { p.logit_bias = {{5, -kInf}}; }, kVocab, "logit_bias[5]", "-inf"},
  };
  for (const Case& c : cases) {
    SamplingParams p;
    c.set(p);
    try {
      p.validate(c.vocab_size);
      ADD_FAILURE() << c.what << ": accepted";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_EQ(e.kind(), ErrorKind::kValue) << c.what;
      EXPECT_EQ(msg.rfind(c.field, 0), 0u) << c.what << ": message does not start with the field: " << msg;
      EXPECT_NE(msg.find(c.value), std::string::npos) << c.what << ": value missing from: " << msg;
    }
  }
}

TEST(SamplingParamsValidate, MessageNamesTheRange) {
  SamplingParams p;
  p.top_p = 1.5;
  try {
    p.validate();
    FAIL() << "accepted top_p=1.5";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("(0, 1]"), std::string::npos) << e.what();
  }
  p = SamplingParams();
  p.stop_token_ids = {kVocab};
  try {
    p.validate(kVocab);
    FAIL() << "accepted a stop token id outside the vocabulary";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[0, 100)"), std::string::npos) << e.what();
  }
}

TEST(SamplingParamsValidate, GreedyIsTemperatureZero) {
  SamplingParams p;
  p.temperature = 0.0;
  EXPECT_TRUE(p.greedy());
  p.temperature = 0.01;
  EXPECT_FALSE(p.greedy());
}

}  // namespace
}  // namespace llmcore
