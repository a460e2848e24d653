#include "tokenizer/tokenizer_config.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace llmcore {

namespace {

using nlohmann::json;

bool read_bool(const json& j, const char* key, bool fallback, const std::string& origin) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  LLMCORE_CHECK_ARG(it->is_boolean(), origin, ": ", key, " must be true or false, got ",
                    it->dump());
  return it->get<bool>();
}

// A token field is "<s>", {"content": "<s>", ...} (a serialized AddedToken) or null.
std::optional<std::string> read_token_value(const json& value, const std::string& field,
                                            const std::string& origin) {
  if (value.is_null()) return std::nullopt;
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object()) {
    auto content = value.find("content");
    LLMCORE_CHECK_ARG(content != value.end() && content->is_string(), origin, ": ", field,
                      " must have a string \"content\", got ", value.dump());
    return content->get<std::string>();
  }
  throw_value_error(origin, ": ", field,
                    " must be a string, an object with \"content\" or null, got ", value.dump());
}

std::optional<std::optional<std::string>> read_token_field(const json& j, const char* key,
                                                           const std::string& origin) {
  auto it = j.find(key);
  if (it == j.end()) return std::nullopt;
  return read_token_value(*it, key, origin);
}

int32_t parse_token_id(const std::string& key, const std::string& origin) {
  size_t used = 0;
  long long id = -1;
  try {
    id = std::stoll(key, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  LLMCORE_CHECK_ARG(used == key.size() && id >= 0 && id <= std::numeric_limits<int32_t>::max(),
                    origin, ": added_tokens_decoder key must be a token id in [0, ",
                    std::numeric_limits<int32_t>::max(), "], got \"", key, "\"");
  return static_cast<int32_t>(id);
}

std::vector<AddedToken> read_added_tokens(const json& j, const std::string& origin) {
  std::vector<AddedToken> tokens;
  auto it = j.find("added_tokens_decoder");
  if (it == j.end() || it->is_null()) return tokens;
  LLMCORE_CHECK_ARG(it->is_object(), origin, ": added_tokens_decoder must be an object, got ",
                    it->dump());
  for (const auto& [key, value] : it->items()) {
    const std::string field = "added_tokens_decoder[\"" + key + "\"]";
    LLMCORE_CHECK_ARG(value.is_object(), origin, ": ", field, " must be an object, got ",
                      value.dump());
    AddedToken token;
    token.id = parse_token_id(key, origin);
    auto content = read_token_value(value, field, origin);
    LLMCORE_CHECK_ARG(content.has_value() && !content->empty(), origin, ": ", field,
                      " must have a non-empty \"content\"");
    token.content = *content;
    token.special = read_bool(value, "special", false, origin + " " + field);
    token.lstrip = read_bool(value, "lstrip", false, origin + " " + field);
    token.rstrip = read_bool(value, "rstrip", false, origin + " " + field);
    token.single_word = read_bool(value, "single_word", false, origin + " " + field);
    tokens.push_back(std::move(token));
  }
  std::sort(tokens.begin(), tokens.end(),
            [](const AddedToken& a, const AddedToken& b) { return a.id < b.id; });
  return tokens;
}

}  // namespace

TokenizerConfig parse_tokenizer_config(const std::string& json_text, const std::string& origin) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    throw_value_error(origin, " is not valid JSON: ", e.what());
  }
  LLMCORE_CHECK_ARG(j.is_object(), origin, " must hold a JSON object, got ", j.type_name());

  TokenizerConfig config;
  config.add_bos_token = read_bool(j, "add_bos_token", true, origin);
  config.add_eos_token = read_bool(j, "add_eos_token", false, origin);
  config.bos_token = read_token_field(j, "bos_token", origin);
  config.eos_token = read_token_field(j, "eos_token", origin);
  config.unk_token = read_token_field(j, "unk_token", origin);
  config.pad_token = read_token_field(j, "pad_token", origin);
  auto extra = j.find("additional_special_tokens");
  if (extra != j.end() && !extra->is_null()) {
    LLMCORE_CHECK_ARG(extra->is_array(), origin, ": additional_special_tokens must be a list, got ",
                      extra->dump());
    for (const auto& value : *extra) {
      auto content = read_token_value(value, "additional_special_tokens", origin);
      if (content.has_value()) config.additional_special_tokens.push_back(*content);
    }
  }
  config.added_tokens = read_added_tokens(j, origin);
  return config;
}

std::optional<TokenizerConfig> read_tokenizer_config(const std::string& dir) {
  const std::filesystem::path path = std::filesystem::path(dir) / "tokenizer_config.json";
  if (!std::filesystem::exists(path)) return std::nullopt;
  std::ifstream in(path, std::ios::binary);
  LLMCORE_CHECK_ARG(in.good(), "cannot read ", path.string());
  std::ostringstream text;
  text << in.rdbuf();
  return parse_tokenizer_config(text.str(), path.string());
}

}  // namespace llmcore
