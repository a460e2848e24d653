// Regular expressions of tokenizer.json (Split pre-tokenizer, Replace normalizer / decoder) on
// PCRE2 with Unicode properties and JIT. Hugging Face runs them on Oniguruma; the few escapes
// whose meaning differs (\s, \w, \h) are rewritten to Oniguruma's classes before compiling, and
// ^ / $ match at line breaks as they do there.
//
// A Regex is immutable after construction and may be used from several threads at once (match
// scratch space is per thread).
#pragma once

#include <cstddef>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>

namespace llmcore {

// Rewrites Oniguruma-only escapes of `pattern` into PCRE2 syntax: \s / \S (Unicode White_Space),
// \w / \W (Oniguruma's word class: Alphabetic, marks, decimal digits, connector punctuation),
// \h / \H (hex digit). Everything else passes through unchanged.
std::string translate_oniguruma_pattern(const std::string& pattern);

class Regex {
 public:
  // pattern: Oniguruma syntax as written in tokenizer.json. origin names the component in the
  // ValueError thrown for a pattern PCRE2 cannot compile.
  Regex(const std::string& pattern, const std::string& origin);
  ~Regex();
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  const std::string& pattern() const { return pattern_; }

  // Calls on_match(start, end) (byte offsets into s) for each match, left to right, the way
  // Oniguruma's find_iter walks: the search resumes at the previous match's end, and an empty
  // match right where the previous match ended is skipped by advancing one character.
  // s must be valid UTF-8.
  template <typename OnMatch>
  void for_each_match(std::string_view s, OnMatch&& on_match) const {
    size_t search_from = 0;
    bool have_previous = false;
    size_t previous_end = 0;
    size_t start = 0;
    size_t end = 0;
    while (search_from <= s.size() && find(s, search_from, &start, &end)) {
      if (start == end && have_previous && previous_end == end) {
        search_from = next_char_boundary(s, search_from);
        continue;
      }
      search_from = end;
      have_previous = true;
      previous_end = end;
      on_match(start, end);
    }
  }

 private:
  // First match in s starting at or after `from`; false when none.
  bool find(std::string_view s, size_t from, size_t* start, size_t* end) const;
  static size_t next_char_boundary(std::string_view s, size_t pos);

  struct Compiled;
  std::string pattern_;
  std::unique_ptr<Compiled> compiled_;
};

// A tokenizer.json pattern: {"String": s} matches s literally, {"Regex": r} the regex r.
class TextPattern {
 public:
  static TextPattern parse(const nlohmann::json& j, const std::string& origin);

  // Same walk as Regex::for_each_match; a literal's matches never overlap.
  template <typename OnMatch>
  void for_each_match(std::string_view s, OnMatch&& on_match) const {
    if (regex_) {
      regex_->for_each_match(s, on_match);
      return;
    }
    size_t pos = 0;
    while ((pos = s.find(literal_, pos)) != std::string_view::npos) {
      on_match(pos, pos + literal_.size());
      pos += literal_.size();
    }
  }

 private:
  std::string literal_;           // non-empty when regex_ is null
  std::unique_ptr<Regex> regex_;  // a Regex pattern, or an empty String (matches everywhere)
};

}  // namespace llmcore
