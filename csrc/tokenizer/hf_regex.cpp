#include "tokenizer/hf_regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cctype>

#include "core/error.h"
#include "tokenizer/hf_json.h"

namespace llmcore {

namespace {

// Oniguruma's classes for the escapes PCRE2 reads differently (checked against Hugging Face
// tokenizers over every code point): \s is White_Space (PCRE2 adds U+180E), \w is Alphabetic +
// marks + decimal digits + connector punctuation (PCRE2 10.42: letters + all numbers + "_"), \h
// is a hex digit (PCRE2: horizontal space).
constexpr const char* kWhiteSpaceSet =
    "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"
    "\\x{202F}\\x{205F}\\x{3000}";
constexpr const char* kWordSet = "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}";
constexpr const char* kHexSet = "0-9a-fA-F";

// Largest JIT stack a match may grow to; long runs of one class (a megabyte of spaces) backtrack
// deeply in patterns like \s*[\r\n]+.
constexpr size_t kJitStackStartBytes = 32 * 1024;
constexpr size_t kJitStackMaxBytes = 16 * 1024 * 1024;

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  const int n = pcre2_get_error_message(code, buffer, sizeof(buffer));
  return n < 0 ? "PCRE2 error " + std::to_string(code)
               : std::string(reinterpret_cast<const char*>(buffer), static_cast<size_t>(n));
}

// Match scratch space of one thread, shared by every Regex: pcre2 match data and JIT stacks must
// not be used by two matches at once.
struct MatchScratch {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* stack = nullptr;

  MatchScratch() {
    data = pcre2_match_data_create(1, nullptr);
    context = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(kJitStackStartBytes, kJitStackMaxBytes, nullptr);
    if (data == nullptr || context == nullptr || stack == nullptr) {
      release();
      throw_runtime_error("cannot allocate PCRE2 match scratch space");
    }
    pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~MatchScratch() { release(); }
  void release() {
    if (stack != nullptr) pcre2_jit_stack_free(stack);
    if (context != nullptr) pcre2_match_context_free(context);
    if (data != nullptr) pcre2_match_data_free(data);
    stack = nullptr;
    context = nullptr;
    data = nullptr;
  }
};

MatchScratch& thread_scratch() {
  static thread_local MatchScratch scratch;
  return scratch;
}

}  // namespace

std::string translate_oniguruma_pattern(const std::string& pattern) {
  std::string out;
  out.reserve(pattern.size() + 64);
  bool in_class = false;
  const size_t n = pattern.size();
  for (size_t i = 0; i < n; ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < n) {
      const char e = pattern[i + 1];
      if (e == 'Q') {
        // \Q...\E quotes its content literally: copy it untouched.
        const size_t close = pattern.find("\\E", i + 2);
        const size_t stop = close == std::string::npos ? n : close + 2;
        out.append(pattern, i, stop - i);
        i = stop - 1;
        continue;
      }
      const char lower = static_cast<char>(std::tolower(static_cast<unsigned char>(e)));
      const char* set = lower == 's' ? kWhiteSpaceSet
                        : lower == 'w' ? kWordSet
                        : lower == 'h' ? kHexSet
                                       : nullptr;
      const bool negated = std::isupper(static_cast<unsigned char>(e)) != 0;
      if (set != nullptr && !in_class) {
        out += negated ? "[^" : "[";
        out += set;
        out += ']';
        ++i;
        continue;
      }
      if (set != nullptr && !negated) {
        out += set;  // inside a class the set's members join it
        ++i;
        continue;
      }
      // A negated escape inside a class cannot be spelled as members; PCRE2's own meaning is
      // kept (the classes differ only outside what tokenizer patterns write).
      out += c;
      out += e;
      ++i;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      if (i + 1 < n && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < n && pattern[i + 1] == ']') out += pattern[++i];  // a leading ']' is literal
      continue;
    }
    if (in_class && c == '[' && i + 1 < n && pattern[i + 1] == ':') {
      const size_t close = pattern.find(":]", i + 2);
      if (close != std::string::npos) {
        out.append(pattern, i, close + 2 - i);
        i = close + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

struct Regex::Compiled {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Compiled() {
    if (code != nullptr) pcre2_code_free(code);
  }
};

Regex::Regex(const std::string& pattern, const std::string& origin)
    : pattern_(pattern), compiled_(std::make_unique<Compiled>()) {
  const std::string translated = translate_oniguruma_pattern(pattern);
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  compiled_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                                  PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &error, &error_offset,
                                  nullptr);
  LLMCORE_CHECK_ARG(compiled_->code != nullptr, origin, ": cannot compile regex \"", pattern,
                    "\" (as PCRE2 \"", translated, "\"): ", pcre2_message(error), " at offset ",
                    error_offset);
  compiled_->jit = pcre2_jit_compile(compiled_->code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() = default;
Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;

bool Regex::find(std::string_view s, size_t from, size_t* start, size_t* end) const {
  MatchScratch& scratch = thread_scratch();
  const auto subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  // UTF-8 validity is checked once per encode() call, not per match.
  const int rc = compiled_->jit
                     ? pcre2_jit_match(compiled_->code, subject, s.size(), from, 0, scratch.data,
                                       scratch.context)
                     : pcre2_match(compiled_->code, subject, s.size(), from, PCRE2_NO_UTF_CHECK,
                                   scratch.data, scratch.context);
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  if (rc < 0) {
    throw_runtime_error("regex \"", pattern_, "\" failed on a text of ", s.size(),
                        " bytes: ", pcre2_message(rc));
  }
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(scratch.data);
  *start = ovector[0];
  *end = ovector[1] < ovector[0] ? ovector[0] : ovector[1];  // \K can end a match before its start
  return true;
}

TextPattern TextPattern::parse(const nlohmann::json& j, const std::string& origin) {
  LLMCORE_CHECK_ARG(j.is_object() && j.size() == 1, origin,
                    ": pattern must be {\"String\": ...} or {\"Regex\": ...}, got ", j.dump());
  TextPattern pattern;
  if (j.contains("String")) {
    pattern.literal_ = hf_json::get_string(j, "String", origin);
    if (pattern.literal_.empty()) pattern.regex_ = std::make_unique<Regex>("", origin);
    return pattern;
  }
  LLMCORE_CHECK_ARG(j.contains("Regex"), origin,
                    ": pattern must be {\"String\": ...} or {\"Regex\": ...}, got ", j.dump());
  pattern.regex_ = std::make_unique<Regex>(hf_json::get_string(j, "Regex", origin), origin);
  return pattern;
}

size_t Regex::next_char_boundary(std::string_view s, size_t pos) {
  ++pos;
  while (pos < s.size() && (static_cast<uint8_t>(s[pos]) & 0xC0) == 0x80) ++pos;
  return pos;
}

}  // namespace llmcore
