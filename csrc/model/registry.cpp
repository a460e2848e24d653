// Architecture name -> model class. The Llama family shares one implementation.
#include <memory>

#include "core/error.h"
#include "model/llama.h"
#include "model/model.h"

namespace llmcore {

std::unique_ptr<Model> create_model(const ModelConfig& config, const std::string& dir,
                                    Backend& backend, LoadFormat load_format, uint64_t seed,
                                    const TensorParallel& tp) {
  const std::string& arch = config.architecture;
  if (arch == "LlamaForCausalLM" || arch == "MistralForCausalLM" || arch == "Qwen2ForCausalLM") {
    return std::make_unique<LlamaModel>(config, dir, backend, load_format, seed, tp);
  }
  throw_value_error("model architecture '", arch,
                    "' is not supported; supported: LlamaForCausalLM, MistralForCausalLM, "
                    "Qwen2ForCausalLM");
}

}  // namespace llmcore
