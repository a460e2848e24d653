#include "tokenizer/added_tokens.h"

#include <algorithm>

namespace llmcore {

namespace {

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

}  // namespace

AddedTokenMatcher::AddedTokenMatcher(std::vector<AddedToken> tokens) : tokens_(std::move(tokens)) {
  tokens_.erase(std::remove_if(tokens_.begin(), tokens_.end(),
                               [](const AddedToken& t) { return t.content.empty(); }),
                tokens_.end());
  for (int i = 0; i < static_cast<int>(tokens_.size()); ++i) {
    by_first_byte_[static_cast<unsigned char>(tokens_[i].content[0])].push_back(i);
  }
  for (auto& bucket : by_first_byte_) {
    std::stable_sort(bucket.begin(), bucket.end(), [this](int a, int b) {
      return tokens_[a].content.size() > tokens_[b].content.size();
    });
  }
}

int AddedTokenMatcher::find_at(std::string_view text, size_t pos) const {
  for (int index : by_first_byte_[static_cast<unsigned char>(text[pos])]) {
    const AddedToken& token = tokens_[index];
    const size_t end = pos + token.content.size();
    if (end > text.size() || text.compare(pos, token.content.size(), token.content) != 0) continue;
    if (token.single_word) {
      const bool left_ok = pos == 0 || text[pos - 1] == ' ';
      const bool right_ok = end == text.size() || text[end] == ' ';
      if (!left_ok || !right_ok) continue;
    }
    return index;
  }
  return -1;
}

std::vector<TextSegment> AddedTokenMatcher::split(std::string_view text) const {
  std::vector<TextSegment> segments;
  if (tokens_.empty()) {
    if (!text.empty()) segments.push_back({text, -1});
    return segments;
  }
  size_t text_start = 0;  // start of the text not yet put in a segment
  size_t pos = 0;
  while (pos < text.size()) {
    const int index = find_at(text, pos);
    if (index < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = tokens_[index];
    size_t text_end = pos;
    if (token.lstrip) {
      while (text_end > text_start && is_space(text[text_end - 1])) --text_end;
    }
    if (text_end > text_start)
      segments.push_back({text.substr(text_start, text_end - text_start), -1});
    segments.push_back({std::string_view(), token.id});
    pos += token.content.size();
    if (token.rstrip) {
      while (pos < text.size() && is_space(text[pos])) ++pos;
    }
    text_start = pos;
  }
  if (text_start < text.size()) segments.push_back({text.substr(text_start), -1});
  return segments;
}

}  // namespace llmcore
