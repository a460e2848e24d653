#include "tokenizer/detokenizer.h"

#include <algorithm>

#include "core/error.h"
#include "tokenizer/utf8.h"

namespace llmcore {

namespace {

// Prompt tokens kept before the first output token: enough context for sentencepiece's
// leading-space rule and for a byte sequence that straddles the prompt end (vLLM uses 5).
constexpr size_t kPromptContextTokens = 5;

}  // namespace

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tokenizer,
                                               const std::vector<int32_t>& prompt_ids,
                                               bool skip_special_tokens,
                                               std::vector<std::string> stop,
                                               bool include_stop_str_in_output)
    : tokenizer_(tokenizer),
      skip_special_tokens_(skip_special_tokens),
      stop_(std::move(stop)),
      include_stop_str_in_output_(include_stop_str_in_output) {
  // The last few prompt ids that have text: a model's vocabulary may be larger than its
  // tokenizer's (padded embeddings), and prompts given as ids may use those rows.
  for (auto it = prompt_ids.rbegin(); it != prompt_ids.rend() && ids_.size() < kPromptContextTokens; ++it) {
    if (*it >= 0 && *it < tokenizer_.vocab_size()) ids_.push_back(*it);
  }
  std::reverse(ids_.begin(), ids_.end());
  prefix_offset_ = 0;
  read_offset_ = ids_.size();

  size_t max_stop_len = 0;
  for (size_t i = 0; i < stop_.size(); ++i) {
    LLMCORE_CHECK_ARG(!stop_[i].empty(), "stop[", i, "] must be a non-empty string");
    // Matches are found bytewise; valid UTF-8 keeps them on character boundaries.
    LLMCORE_CHECK_ARG(is_valid_utf8(stop_[i]), "stop[", i, "] must be valid UTF-8");
    max_stop_len = std::max(max_stop_len, stop_[i].size());
  }
  // A stop string may still complete with later text: its longest possible start inside the
  // current text is max_stop_len - 1 bytes.
  stop_hold_ = (max_stop_len > 0 && !include_stop_str_in_output_) ? max_stop_len - 1 : 0;
}

bool IncrementalDetokenizer::decode_window(bool wait_for_complete_chars) {
  const std::vector<int32_t> prefix_ids(ids_.begin() + prefix_offset_, ids_.begin() + read_offset_);
  const std::vector<int32_t> window_ids(ids_.begin() + prefix_offset_, ids_.end());
  const std::string prefix_text = tokenizer_.decode(prefix_ids, skip_special_tokens_);
  const std::string new_text = tokenizer_.decode(window_ids, skip_special_tokens_);

  // new_text normally extends prefix_text. It does not when the window starts with bytes of a
  // character begun before it (prefix_text shows U+FFFD where new_text has the character), so
  // the delta starts at the common prefix, on a character boundary of new_text.
  size_t common = 0;
  const size_t limit = std::min(prefix_text.size(), new_text.size());
  while (common < limit && prefix_text[common] == new_text[common]) ++common;
  if (common < prefix_text.size()) common = utf8_floor_boundary(new_text, common);

  if (new_text.size() <= common) return false;
  if (wait_for_complete_chars && ends_with_replacement_char(new_text)) return false;
  text_.append(new_text, common, std::string::npos);
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  return true;
}

void IncrementalDetokenizer::check_stop_strings(size_t old_size) {
  size_t best_pos = std::string::npos;
  size_t best = 0;
  for (size_t i = 0; i < stop_.size(); ++i) {
    const std::string& stop = stop_[i];
    // Matches ending inside the old text were looked for when it was added.
    const size_t start = old_size >= stop.size() ? old_size - stop.size() + 1 : 0;
    const size_t pos = text_.find(stop, start);
    if (pos < best_pos) {
      best_pos = pos;
      best = i;
    }
  }
  if (best_pos == std::string::npos) return;
  stopped_ = true;
  stop_str_ = stop_[best];
  text_.resize(include_stop_str_in_output_ ? best_pos + stop_str_.size() : best_pos);
  // Held-back text never reaches into a later match, so nothing returned is taken back.
  LLMCORE_CHECK(emitted_ <= text_.size(), "emitted ", emitted_, " bytes, text is ", text_.size());
}

std::string IncrementalDetokenizer::take_ready_text(size_t hold) {
  size_t ready = text_.size() > hold ? text_.size() - hold : 0;
  ready = utf8_floor_boundary(text_, ready);
  if (ready <= emitted_) return std::string();
  std::string out = text_.substr(emitted_, ready - emitted_);
  emitted_ = ready;
  return out;
}

IncrementalDetokenizer::Update IncrementalDetokenizer::append(int32_t token_id, bool check_stop) {
  Update update;
  if (stopped_) {
    update.stopped = true;
    update.stop_str = stop_str_;
    return update;
  }
  ids_.push_back(token_id);
  const size_t old_size = text_.size();
  if (decode_window(/*wait_for_complete_chars=*/true) && check_stop && !stop_.empty()) {
    check_stop_strings(old_size);
  }
  update.stopped = stopped_;
  update.stop_str = stop_str_;
  update.text_delta = take_ready_text(stopped_ ? 0 : stop_hold_);
  return update;
}

std::string IncrementalDetokenizer::flush() {
  if (!stopped_ && read_offset_ < ids_.size()) {
    const size_t old_size = text_.size();
    if (decode_window(/*wait_for_complete_chars=*/false) && !stop_.empty()) {
      check_stop_strings(old_size);
    }
  }
  return take_ready_text(0);
}

}  // namespace llmcore
