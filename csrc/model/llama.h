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
  // With tp.size > 1 the model holds rank tp.rank's shard (parallel/sharding.h) and its forward
  // pass all-reduces after o_proj, down_proj and the embedding and all-gathers the logits.
  LlamaModel(const ModelConfig& config, const std::string& dir, Backend& backend,
             LoadFormat load_format, uint64_t seed, const TensorParallel& tp = {});

  const ModelConfig& config() const override { return config_; }
  Tensor forward(const ForwardInput& input, KVCache& kv_cache) override;

 private:
  // Device tensors in the backend's activation dtype; biases are undefined when absent. Shapes
  // are this rank's: Hq, Hkv, I its heads and MLP part (the whole model's when not sharded).
  struct Layer {
    Tensor input_layernorm;           // [Hd]
    Tensor qkv_proj;                  // [(Hq + 2 Hkv) * D, Hd]: q rows, then k, then v
    Tensor qkv_bias;                  // [(Hq + 2 Hkv) * D]
    Tensor o_proj;                    // [Hd, Hq * D]
    Tensor o_bias;                    // [Hd], rank 0 only
    Tensor post_attention_layernorm;  // [Hd]
    Tensor gate_up_proj;              // [2 I, Hd]: gate rows, then up
    Tensor gate_up_bias;              // [2 I]
    Tensor down_proj;                 // [Hd, I]
    Tensor down_bias;                 // [Hd], rank 0 only
  };

  // Builds the layers from upload_rows(names): this rank's parts of the named weights stacked
  // along rows, on the backend (undefined when the rank holds none of it).
  void load(const std::function<Tensor(const std::vector<std::string>&)>& upload_rows);

  ModelConfig config_;
  Backend& backend_;
  TensorParallel tp_;
  int64_t intermediate_size_ = 0;  // this rank's I
  int64_t vocab_start_ = 0;        // first vocabulary id of embed_tokens_ / lm_head_ rows
  AttnShape attn_shape_;           // this rank's heads
  Tensor embed_tokens_;  // [Vr, Hd]: vocabulary ids [vocab_start_, vocab_start_ + Vr), V when unsharded
  std::vector<Layer> layers_;
  Tensor norm_;     // [Hd]
  Tensor lm_head_;  // [Vr, Hd]; shares embed_tokens_' memory when tied
  Tensor cos_sin_;  // [max_position_embeddings, D] float32
};

}  // namespace llmcore
