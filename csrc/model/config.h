// ModelConfig: the parts of a HuggingFace config.json the engine needs, normalized across the
// spellings transformers has used (rope_theta/rope_scaling/torch_dtype vs rope_parameters/dtype).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace llmcore {

struct RopeScaling {
  std::string rope_type = "default";  // "default", "linear", "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0;        // llama3
  double high_freq_factor = 4.0;       // llama3
  int64_t original_max_position_embeddings = 0;  // llama3
};

struct ModelConfig {
  std::string architecture;  // "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"
  std::string model_type;    // "llama", "mistral", "qwen2"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;   // defaults to num_attention_heads
  int64_t head_dim = 0;              // explicit, or hidden_size / num_attention_heads
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  int64_t max_position_embeddings = 2048;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;             // Qwen2 always; Llama when attention_bias
  bool o_bias = false;               // Llama when attention_bias
  bool mlp_bias = false;             // Llama when mlp_bias
  int64_t sliding_window = 0;        // 0: full attention
  DType dtype = DType::kF32;         // torch_dtype / dtype of the checkpoint
  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;  // config.json's eos_token_id (int or list)

  // Throws ValueError naming the field for missing or inconsistent values, and for
  // architectures the engine does not implement (naming the supported ones).
  static ModelConfig from_json_string(const std::string& json_text);
  static ModelConfig from_file(const std::string& path);  // .../config.json
};

}  // namespace llmcore
