#include "tokenizer/decoders.h"

#include <utility>

#include "tokenizer/byte_level.h"
#include "tokenizer/hf_json.h"
#include "tokenizer/hf_regex.h"
#include "tokenizer/unicode_chars.h"
#include "tokenizer/utf8.h"

namespace llmcore {

namespace {

using hf_json::json;

// Byte-level tokens back to bytes, all tokens fused into one string. A token with a character
// outside the byte-level alphabet (an added token such as " hi") passes through as its UTF-8.
// Invalid UTF-8 (a character cut between tokens) becomes U+FFFD per maximal subpart, as Rust's
// String::from_utf8_lossy does.
class ByteLevelDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>* tokens) const override {
    const ByteLevelAlphabet& alphabet = ByteLevelAlphabet::get();
    std::string bytes;
    std::string mapped;
    for (const std::string& token : *tokens) {
      mapped.clear();
      bool in_alphabet = true;
      size_t pos = 0;
      while (pos < token.size()) {
        size_t len = 0;
        const int byte = alphabet.byte_of(decode_utf8_char(token, pos, &len));
        if (byte < 0) {
          in_alphabet = false;
          break;
        }
        mapped.push_back(static_cast<char>(byte));
        pos += len;
      }
      bytes += in_alphabet ? mapped : token;
    }
    tokens->assign(1, replace_invalid_utf8(bytes));
  }
};

// The replacement character becomes a space, except in the first token when a prefix was
// prepended at encode time (prepend_scheme always / first), where it is dropped.
class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, bool drop_in_first)
      : replacement_(std::move(replacement)), drop_in_first_(drop_in_first) {}
  void decode_chain(std::vector<std::string>* tokens) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      std::string& token = (*tokens)[i];
      if (token.find(replacement_) == std::string::npos) continue;
      std::string out;
      size_t pos = 0;
      size_t found;
      while ((found = token.find(replacement_, pos)) != std::string::npos) {
        out.append(token, pos, found - pos);
        if (!(i == 0 && drop_in_first_)) out.push_back(' ');
        pos = found + replacement_.size();
      }
      out.append(token, pos, std::string::npos);
      token = std::move(out);
    }
  }

 private:
  std::string replacement_;
  bool drop_in_first_;
};

// Runs of "<0xXX>" byte tokens become the text they spell; a run that is not valid UTF-8
// becomes one U+FFFD per byte (Hugging Face's rule, unlike from_utf8_lossy).
class ByteFallbackDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>* tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens->size());
    std::string run;
    size_t run_length = 0;
    auto flush = [&]() {
      if (run_length == 0) return;
      if (is_valid_utf8(run)) {
        out.push_back(run);
      } else {
        for (size_t k = 0; k < run_length; ++k) out.emplace_back(kReplacementChar);
      }
      run.clear();
      run_length = 0;
    };
    for (std::string& token : *tokens) {
      const int byte = parse_byte_token(token);
      if (byte >= 0) {
        run.push_back(static_cast<char>(byte));
        ++run_length;
        continue;
      }
      flush();
      out.push_back(std::move(token));
    }
    flush();
    tokens->swap(out);
  }

 private:
  // The byte of "<0xXX>", or -1. Hugging Face parses XX with Rust's u8::from_str_radix(_, 16),
  // which also takes "+X".
  static int parse_byte_token(const std::string& token) {
    if (token.size() != 6 || token.compare(0, 3, "<0x") != 0 || token[5] != '>') return -1;
    auto digit = [](char c) {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    const int hi = digit(token[3]);
    const int lo = digit(token[4]);
    if (token[3] == '+' && lo >= 0) return lo;
    if (hi < 0 || lo < 0) return -1;
    return hi * 16 + lo;
  }
};

class FuseDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>* tokens) const override {
    std::string fused;
    for (const std::string& token : *tokens) fused += token;
    tokens->assign(1, std::move(fused));
  }
};

// Removes up to `start` leading and `stop` trailing copies of `content` from every token.
class StripDecoder final : public Decoder {
 public:
  StripDecoder(std::string content, size_t start, size_t stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>* tokens) const override {
    const size_t n = content_.size();
    for (std::string& token : *tokens) {
      size_t begin = 0;
      for (size_t k = 0; k < start_ && begin + n <= token.size() && token.compare(begin, n, content_) == 0; ++k) {
        begin += n;
      }
      size_t end = token.size();
      for (size_t k = 0; k < stop_ && end >= begin + n && token.compare(end - n, n, content_) == 0; ++k) {
        end -= n;
      }
      token = token.substr(begin, end - begin);
    }
  }

 private:
  std::string content_;  // one character
  size_t start_;
  size_t stop_;
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(TextPattern pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void decode_chain(std::vector<std::string>* tokens) const override {
    for (std::string& token : *tokens) {
      std::string out;
      size_t copied = 0;
      bool matched = false;
      pattern_.for_each_match(token, [&](size_t start, size_t end) {
        out.append(token, copied, start - copied);
        out += content_;
        copied = end;
        matched = true;
      });
      if (!matched) continue;
      out.append(token, copied, std::string::npos);
      token = std::move(out);
    }
  }

 private:
  TextPattern pattern_;
  std::string content_;
};

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps) : steps_(std::move(steps)) {}
  void decode_chain(std::vector<std::string>* tokens) const override {
    for (const auto& step : steps_) step->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

bool metaspace_drops_first(const json& j, const std::string& origin) {
  auto it = j.find("prepend_scheme");
  if (it == j.end() || it->is_null()) return hf_json::get_bool_or(j, "add_prefix_space", true, origin);
  const std::string scheme = hf_json::get_string(j, "prepend_scheme", origin);
  LLMCORE_CHECK_ARG(scheme == "always" || scheme == "first" || scheme == "never", origin,
                    ": prepend_scheme \"", scheme, "\" is not one of always, first, never");
  return scheme != "never";
}

}  // namespace

std::unique_ptr<Decoder> parse_decoder(const json& j, const std::string& origin) {
  if (j.is_null()) return nullptr;
  const std::string type = hf_json::component_type(j, origin);
  const std::string where = origin + " (" + type + ")";
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace") {
    return std::make_unique<MetaspaceDecoder>(hf_json::get_char(j, "replacement", where),
                                              metaspace_drops_first(j, where));
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") {
    return std::make_unique<StripDecoder>(hf_json::get_char(j, "content", where),
                                          hf_json::get_size_or(j, "start", 0, where),
                                          hf_json::get_size_or(j, "stop", 0, where));
  }
  if (type == "Replace") {
    return std::make_unique<ReplaceDecoder>(
        TextPattern::parse(hf_json::require(j, "pattern", where), where + " pattern"),
        hf_json::get_string(j, "content", where));
  }
  if (type == "Sequence") {
    const json& list = hf_json::require(j, "decoders", where);
    LLMCORE_CHECK_ARG(list.is_array(), where, ": \"decoders\" must be a list, got ", list.dump());
    std::vector<std::unique_ptr<Decoder>> steps;
    for (size_t i = 0; i < list.size(); ++i) {
      auto step = parse_decoder(list[i], origin + ".decoders[" + std::to_string(i) + "]");
      if (step) steps.push_back(std::move(step));
    }
    return std::make_unique<SequenceDecoder>(std::move(steps));
  }
  throw_value_error(origin, ": decoder type \"", type,
                    "\" is not supported (supported: ByteLevel, Metaspace, ByteFallback, Fuse, "
                    "Strip, Replace, Sequence)");
}

}  // namespace llmcore
