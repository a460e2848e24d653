// Reading tokenizer.json components: typed field access whose errors name the component path
// ("tokenizer.json pre_tokenizer.pretokenizers[1] (Split)"), the field and what was found.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"

namespace llmcore::hf_json {

using nlohmann::json;

inline const json& require(const json& j, const char* key, const std::string& origin) {
  auto it = j.find(key);
  LLMCORE_CHECK_ARG(it != j.end(), origin, ": missing field \"", key, "\"");
  return *it;
}

inline std::string get_string(const json& j, const char* key, const std::string& origin) {
  const json& value = require(j, key, origin);
  LLMCORE_CHECK_ARG(value.is_string(), origin, ": \"", key, "\" must be a string, got ", value.dump());
  return value.get<std::string>();
}

inline std::string get_string_or(const json& j, const char* key, const std::string& fallback,
                                 const std::string& origin) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  LLMCORE_CHECK_ARG(it->is_string(), origin, ": \"", key, "\" must be a string, got ", it->dump());
  return it->get<std::string>();
}

inline bool get_bool_or(const json& j, const char* key, bool fallback, const std::string& origin) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  LLMCORE_CHECK_ARG(it->is_boolean(), origin, ": \"", key, "\" must be true or false, got ",
                    it->dump());
  return it->get<bool>();
}

inline size_t get_size_or(const json& j, const char* key, size_t fallback, const std::string& origin) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  LLMCORE_CHECK_ARG(it->is_number_integer() && it->get<int64_t>() >= 0, origin, ": \"", key,
                    "\" must be a non-negative integer, got ", it->dump());
  return static_cast<size_t>(it->get<int64_t>());
}

// The "type" of a component object.
inline std::string component_type(const json& j, const std::string& origin) {
  LLMCORE_CHECK_ARG(j.is_object(), origin, " must be an object or null, got ", j.dump());
  return get_string(j, "type", origin);
}

// A single character field (Metaspace's "replacement", Strip's "content"); returns its UTF-8.
inline std::string get_char(const json& j, const char* key, const std::string& origin) {
  const std::string value = get_string(j, key, origin);
  size_t n = 0;  // code points
  for (char c : value) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  LLMCORE_CHECK_ARG(n == 1, origin, ": \"", key, "\" must be a single character, got \"", value, "\"");
  return value;
}

}  // namespace llmcore::hf_json
