// IncrementalDetokenizer: turns a growing list of output token ids into text deltas that are
// always complete UTF-8, and applies stop strings.
//
// Decoding a window of ids (prefix_offset .. end) and subtracting the decoding of
// (prefix_offset .. read_offset) keeps the leading-space rules of sentencepiece and byte-level
// BPE right; text ending in U+FFFD (an incomplete multi-byte character) is held back until the
// next token completes it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace llmcore {

class IncrementalDetokenizer {
 public:
  // `prompt_ids` seed the decoding window so the first output token gets its leading space.
  // stop: stop strings; include_stop_str_in_output keeps the matched stop string in the text.
  IncrementalDetokenizer(const Tokenizer& tokenizer, const std::vector<int32_t>& prompt_ids,
                         bool skip_special_tokens, std::vector<std::string> stop,
                         bool include_stop_str_in_output);

  struct Update {
    std::string text_delta;  // new text that may be shown now (complete UTF-8)
    bool stopped = false;    // a stop string matched; no more tokens should be generated
    std::string stop_str;    // which one
  };

  // Feeds one new output token. Text that could still become the start of a stop string is
  // held back (at most max stop length - 1 bytes) until it cannot, or until flush().
  // check_stop false (min_tokens not reached yet) leaves stop strings unmatched for this token's
  // text; later checks still find a match that ends in later text.
  Update append(int32_t token_id, bool check_stop = true);
  // At the end of the sequence (not stopped by a stop string): releases held-back text, and
  // the text of trailing tokens still waiting for the rest of a character (as U+FFFD).
  std::string flush();

  const std::string& output_text() const { return text_; }  // everything so far, incl. held back
  // A stop string matched (in append() or flush()); the text ends before it (or after it with
  // include_stop_str_in_output).
  bool stopped() const { return stopped_; }

 private:
  const Tokenizer& tokenizer_;
  std::vector<int32_t> ids_;   // prompt tail + output ids
  size_t prefix_offset_ = 0;
  size_t read_offset_ = 0;
  bool skip_special_tokens_;
  std::vector<std::string> stop_;
  bool include_stop_str_in_output_;
  size_t stop_hold_ = 0;       // bytes held back: max stop length - 1; 0 without stop strings
                               // or with include_stop_str_in_output
  std::string text_;           // full output text
  size_t emitted_ = 0;         // bytes of text_ already returned
  bool stopped_ = false;
  std::string stop_str_;       // the stop string that matched

  // Decodes the window ids_[prefix_offset_..] and appends what it adds to text_; with
  // wait_for_complete_chars, text ending in U+FFFD stays pending. Returns whether text_ grew.
  bool decode_window(bool wait_for_complete_chars);
  // Looks for stop strings ending after text_[old_size - 1]; truncates text_ at the earliest.
  void check_stop_strings(size_t old_size);
  // Returns the not yet returned text that may be shown now.
  std::string take_ready_text(size_t hold);
};

}  // namespace llmcore
