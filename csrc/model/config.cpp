// config.json -> ModelConfig. Field names and defaults follow the transformers classes
// (LlamaConfig, MistralConfig, Qwen2Config) so that a config.json missing an optional field means
// what it means to transformers.
#include "model/config.h"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace llmcore {

namespace {

using nlohmann::json;

struct ArchInfo {
  const char* architecture;
  const char* model_type;
  int64_t default_max_position_embeddings;  // the transformers class default
};

constexpr ArchInfo kArchs[] = {
    {"LlamaForCausalLM", "llama", 2048},
    {"MistralForCausalLM", "mistral", 4096 * 32},
    {"Qwen2ForCausalLM", "qwen2", 32768},
};

std::string supported_architectures() {
  std::string s;
  for (const ArchInfo& a : kArchs) s += (s.empty() ? "" : ", ") + std::string(a.architecture);
  return s;
}

bool present(const json& j, const char* key) { return j.contains(key) && !j.at(key).is_null(); }

int64_t get_int(const json& j, const char* key, const char* where) {
  const json& v = j.at(key);
  // Some configs write integral values as 4096.0; accept those but not 4096.5.
  if (v.is_number_float()) {
    const double d = v.get<double>();
    LLMCORE_CHECK_ARG(d == static_cast<double>(static_cast<int64_t>(d)), where, " field '", key,
                      "' must be an integer, got ", v.dump());
    return static_cast<int64_t>(d);
  }
  LLMCORE_CHECK_ARG(v.is_number_integer(), where, " field '", key, "' must be an integer, got ",
                    v.dump());
  return v.get<int64_t>();
}

int64_t required_int(const json& j, const char* key) {
  LLMCORE_CHECK_ARG(present(j, key), "config.json is missing the required field '", key, "'");
  return get_int(j, key, "config.json");
}

int64_t optional_int(const json& j, const char* key, int64_t fallback,
                     const char* where = "config.json") {
  return present(j, key) ? get_int(j, key, where) : fallback;
}

double get_number(const json& j, const char* key, const char* where) {
  const json& v = j.at(key);
  LLMCORE_CHECK_ARG(v.is_number(), where, " field '", key, "' must be a number, got ", v.dump());
  return v.get<double>();
}

double optional_number(const json& j, const char* key, double fallback,
                       const char* where = "config.json") {
  return present(j, key) ? get_number(j, key, where) : fallback;
}

bool optional_bool(const json& j, const char* key, bool fallback) {
  if (!present(j, key)) return fallback;
  const json& v = j.at(key);
  LLMCORE_CHECK_ARG(v.is_boolean(), "config.json field '", key, "' must be true or false, got ",
                    v.dump());
  return v.get<bool>();
}

void check_positive(int64_t value, const char* field) {
  LLMCORE_CHECK_ARG(value > 0, "config.json field '", field, "' must be >= 1, got ", value);
}

// The RoPE parameters live in `rope_scaling` (+ top-level `rope_theta`) in configs written by
// transformers 4.x and in `rope_parameters` (with `rope_theta` inside) in 5.x.
void parse_rope(const json& j, ModelConfig& c) {
  const char* where = "config.json";
  json params = json::object();
  if (present(j, "rope_parameters")) {
    params = j.at("rope_parameters");
    where = "config.json rope_parameters";
  } else if (present(j, "rope_scaling")) {
    params = j.at("rope_scaling");
    where = "config.json rope_scaling";
  }
  LLMCORE_CHECK_ARG(params.is_object(), where, " must be an object, got ", params.dump());
  for (const auto& item : params.items()) {
    // transformers nests a dict per layer type for models mixing attention kinds.
    LLMCORE_CHECK_ARG(!item.value().is_object(), where, " entry '", item.key(),
                      "' is a per-layer-type parameter set, which is not supported");
  }

  c.rope_theta = present(params, "rope_theta") ? get_number(params, "rope_theta", where)
                                               : optional_number(j, "rope_theta", 10000.0);
  LLMCORE_CHECK_ARG(c.rope_theta > 0, where, " field 'rope_theta' must be > 0, got ", c.rope_theta);

  const double partial = present(params, "partial_rotary_factor")
                             ? get_number(params, "partial_rotary_factor", where)
                             : optional_number(j, "partial_rotary_factor", 1.0);
  LLMCORE_CHECK_ARG(partial == 1.0, where, " field 'partial_rotary_factor' = ", partial,
                    " is not supported (only 1.0: RoPE over the whole head)");

  std::string type = "default";
  for (const char* key : {"rope_type", "type"}) {
    if (present(params, key)) {
      LLMCORE_CHECK_ARG(params.at(key).is_string(), where, " field '", key,
                        "' must be a string, got ", params.at(key).dump());
      type = params.at(key).get<std::string>();
      break;
    }
  }
  RopeScaling& r = c.rope_scaling;
  r.rope_type = type;
  if (type == "default") return;
  if (type != "linear" && type != "llama3") {
    throw_value_error(where, " rope_type '", type,
                      "' is not supported (supported: default, linear, llama3)");
  }
  LLMCORE_CHECK_ARG(present(params, "factor"), where,
                    " is missing 'factor' (required by rope_type '", type, "')");
  r.factor = get_number(params, "factor", where);
  LLMCORE_CHECK_ARG(r.factor > 0, where, " field 'factor' must be > 0, got ", r.factor);
  if (type == "linear") return;

  for (const char* key : {"low_freq_factor", "high_freq_factor"}) {
    LLMCORE_CHECK_ARG(present(params, key), where, " is missing '", key,
                      "' (required by rope_type 'llama3')");
  }
  r.low_freq_factor = get_number(params, "low_freq_factor", where);
  r.high_freq_factor = get_number(params, "high_freq_factor", where);
  LLMCORE_CHECK_ARG(r.low_freq_factor > 0, where, " field 'low_freq_factor' must be > 0, got ",
                    r.low_freq_factor);
  // The smoothing interpolates over (low, high); equal factors would divide by zero.
  LLMCORE_CHECK_ARG(r.high_freq_factor > r.low_freq_factor, where,
                    " field 'high_freq_factor' must be > low_freq_factor (", r.low_freq_factor,
                    "), got ", r.high_freq_factor);
  // transformers falls back to max_position_embeddings when the field is absent.
  r.original_max_position_embeddings =
      optional_int(params, "original_max_position_embeddings", c.max_position_embeddings, where);
  LLMCORE_CHECK_ARG(r.original_max_position_embeddings > 0, where,
                    " field 'original_max_position_embeddings' must be >= 1, got ",
                    r.original_max_position_embeddings);
}

DType parse_dtype(const json& j) {
  for (const char* key : {"dtype", "torch_dtype"}) {
    if (!present(j, key)) continue;
    const json& v = j.at(key);
    LLMCORE_CHECK_ARG(v.is_string(), "config.json field '", key, "' must be a string, got ",
                      v.dump());
    std::string name = v.get<std::string>();
    if (name.rfind("torch.", 0) == 0) name = name.substr(6);
    const std::string what = str_cat("config.json field '", key, "'");
    return parse_float_dtype(name, what.c_str());
  }
  return DType::kF32;  // the transformers default when a config names no dtype
}

void parse_token_ids(const json& j, ModelConfig& c) {
  if (present(j, "bos_token_id")) c.bos_token_id = get_int(j, "bos_token_id", "config.json");
  if (!present(j, "eos_token_id")) return;
  const json& eos = j.at("eos_token_id");
  if (eos.is_array()) {
    for (const json& e : eos) {
      LLMCORE_CHECK_ARG(e.is_number_integer(),
                        "config.json field 'eos_token_id' must hold integers, got ", eos.dump());
      c.eos_token_ids.push_back(e.get<int64_t>());
    }
  } else {
    c.eos_token_ids.push_back(get_int(j, "eos_token_id", "config.json"));
  }
}

void parse_attention_flags(const json& j, ModelConfig& c) {
  if (c.architecture == "Qwen2ForCausalLM") {
    c.qkv_bias = true;  // Qwen2 attention always has q/k/v biases and no o bias
    if (optional_bool(j, "use_sliding_window", false)) {
      throw_value_error("config.json field 'use_sliding_window' = true is not supported for ",
                        c.architecture, " (per-layer sliding windows)");
    }
    if (present(j, "layer_types")) {
      for (const json& t : j.at("layer_types")) {
        LLMCORE_CHECK_ARG(t == "full_attention", "config.json field 'layer_types' contains ",
                          t.dump(), "; only full_attention is supported for ", c.architecture);
      }
    }
    return;
  }
  if (c.architecture == "LlamaForCausalLM") {
    c.qkv_bias = c.o_bias = optional_bool(j, "attention_bias", false);
    c.mlp_bias = optional_bool(j, "mlp_bias", false);
    return;
  }
  // Mistral: no biases; the class default window is 4096, an explicit null means full attention.
  c.sliding_window = j.contains("sliding_window") ? optional_int(j, "sliding_window", 0) : 4096;
  LLMCORE_CHECK_ARG(c.sliding_window >= 0, "config.json field 'sliding_window' must be >= 0, got ",
                    c.sliding_window);
}

}  // namespace

ModelConfig ModelConfig::from_json_string(const std::string& json_text) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::parse_error& e) {
    throw_value_error("config.json is not valid JSON: ", e.what());
  }
  LLMCORE_CHECK_ARG(j.is_object(), "config.json must hold a JSON object");

  ModelConfig c;
  LLMCORE_CHECK_ARG(
      present(j, "architectures") && j.at("architectures").is_array() &&
          !j.at("architectures").empty() && j.at("architectures")[0].is_string(),
      "config.json field 'architectures' must be a non-empty list of names; supported: ",
      supported_architectures());
  c.architecture = j.at("architectures")[0].get<std::string>();
  const ArchInfo* arch = nullptr;
  for (const ArchInfo& a : kArchs) {
    if (c.architecture == a.architecture) arch = &a;
  }
  if (arch == nullptr) {
    throw_value_error("config.json architecture '", c.architecture,
                      "' is not supported; supported: ", supported_architectures());
  }
  c.model_type = arch->model_type;

  c.vocab_size = required_int(j, "vocab_size");
  c.hidden_size = required_int(j, "hidden_size");
  c.intermediate_size = required_int(j, "intermediate_size");
  c.num_hidden_layers = required_int(j, "num_hidden_layers");
  c.num_attention_heads = required_int(j, "num_attention_heads");
  check_positive(c.vocab_size, "vocab_size");
  check_positive(c.hidden_size, "hidden_size");
  check_positive(c.intermediate_size, "intermediate_size");
  check_positive(c.num_hidden_layers, "num_hidden_layers");
  check_positive(c.num_attention_heads, "num_attention_heads");

  c.num_key_value_heads = optional_int(j, "num_key_value_heads", c.num_attention_heads);
  check_positive(c.num_key_value_heads, "num_key_value_heads");
  LLMCORE_CHECK_ARG(c.num_attention_heads % c.num_key_value_heads == 0,
                    "config.json field 'num_key_value_heads' (", c.num_key_value_heads,
                    ") must divide num_attention_heads (", c.num_attention_heads, ")");
  if (present(j, "head_dim")) {
    c.head_dim = get_int(j, "head_dim", "config.json");
    check_positive(c.head_dim, "head_dim");
  } else {
    LLMCORE_CHECK_ARG(c.hidden_size % c.num_attention_heads == 0,
                      "config.json field 'hidden_size' (", c.hidden_size,
                      ") must be divisible by num_attention_heads (", c.num_attention_heads,
                      ") when head_dim is not given");
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  // RoPE rotates pairs (i, i + D/2).
  LLMCORE_CHECK_ARG(c.head_dim % 2 == 0, "config.json field 'head_dim' must be even, got ",
                    c.head_dim);

  if (present(j, "hidden_act")) {
    LLMCORE_CHECK_ARG(j.at("hidden_act") == "silu",
                      "config.json field 'hidden_act' = ", j.at("hidden_act").dump(),
                      " is not supported (only \"silu\")");
  }
  c.rms_norm_eps = optional_number(j, "rms_norm_eps", 1e-6);
  LLMCORE_CHECK_ARG(c.rms_norm_eps > 0, "config.json field 'rms_norm_eps' must be > 0, got ",
                    c.rms_norm_eps);
  c.max_position_embeddings =
      optional_int(j, "max_position_embeddings", arch->default_max_position_embeddings);
  check_positive(c.max_position_embeddings, "max_position_embeddings");
  c.tie_word_embeddings = optional_bool(j, "tie_word_embeddings", false);
  c.dtype = parse_dtype(j);

  parse_rope(j, c);
  parse_attention_flags(j, c);
  parse_token_ids(j, c);
  return c;
}

ModelConfig ModelConfig::from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  LLMCORE_CHECK_ARG(in.good(), "cannot open model config '", path, "'");
  std::ostringstream text;
  text << in.rdbuf();
  try {
    return from_json_string(text.str());
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kValue) throw;
    throw_value_error(path, ": ", e.what());
  }
}

}  // namespace llmcore
