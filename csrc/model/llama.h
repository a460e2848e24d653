// The Llama family (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM): one decoder whose
// variants differ only in config flags (biases, sliding window, tied embeddings, RoPE scaling).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/model.h"

namespace llmcore {

// One tensor of the HuggingFace checkpoint layout and the shape the config implies for it.
struct WeightSpec {
  std::string name;
  Shape shape;
};

// Every tensor the model reads for `c`, in load order (lm_head.weight only when untied).
std::vector<WeightSpec> llama_weight_specs(const ModelConfig& c);

// The float32 value LoadFormat::kDummy gives checkpoint tensor `name`: all ones for RMSNorm
// weights (names ending in "norm.weight"), otherwise uniform in [-0.02*sqrt(3), 0.02*sqrt(3)]
// (std 0.02): element i is dummy_value(stream(seed, name), i) (core/dummy_values.h), so a
// tensor's values depend on nothing else (not the load order, not the thread count, not the
// backend). The model draws them on its backend (Backend::fill_dummy); this is the host copy.
Tensor dummy_weight(const std::string& name, const Shape& shape, uint64_t seed);

class LlamaModel : public Model {
 public:
  // kAuto reads `dir`'s safetensors (checking every tensor's presence and shape before any
  // upload); kDummy reads nothing and draws dummy_weight(name, shape, seed)'s values on the
  // backend.
  LlamaModel(const ModelConfig& config, const std::string& dir, Backend& backend,
             LoadFormat load_format, uint64_t seed);

  const ModelConfig& config() const override { return config_; }
  Tensor forward(const ForwardInput& input, KVCache& kv_cache) override;

 private:
  // Device tensors in the backend's activation dtype; biases are undefined when absent.
  struct Layer {
    Tensor input_layernorm;           // [Hd]
    Tensor qkv_proj;                  // [(Hq + 2 Hkv) * D, Hd]: q rows, then k, then v
    Tensor qkv_bias;                  // [(Hq + 2 Hkv) * D]
    Tensor o_proj;                    // [Hd, Hq * D]
    Tensor o_bias;                    // [Hd]
    Tensor post_attention_layernorm;  // [Hd]
    Tensor gate_up_proj;              // [2 I, Hd]: gate rows, then up
    Tensor gate_up_bias;              // [2 I]
    Tensor down_proj;                 // [Hd, I]
    Tensor down_bias;                 // [Hd]
  };

  // Builds the layers from upload_rows(names): the named weights stacked along rows, on the backend.
  void load(const std::function<Tensor(const std::vector<std::string>&)>& upload_rows);

  ModelConfig config_;
  Backend& backend_;
  AttnShape attn_shape_;
  Tensor embed_tokens_;  // [V, Hd]
  std::vector<Layer> layers_;
  Tensor norm_;     // [Hd]
  Tensor lm_head_;  // [V, Hd]; shares embed_tokens_' memory when tied
  Tensor cos_sin_;  // [max_position_embeddings, D] float32
};

}  // namespace llmcore
