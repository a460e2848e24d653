// The rotary-embedding table the backends' rotary_embedding op reads.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"

namespace llmcore {

// The D/2 inverse frequencies (radians per position) of c.rope_theta and c.rope_scaling,
// matching transformers' default / linear / llama3 RoPE initializers.
std::vector<double> rope_inv_freq(const ModelConfig& c);

// CPU float32 [max_positions, D]: row p holds cos(p * inv_freq[0..D/2)) then
// sin(p * inv_freq[0..D/2)) (the NeoX layout the backends rotate with). Computed in double.
Tensor build_rope_cos_sin(const ModelConfig& c, int64_t max_positions);

}  // namespace llmcore
