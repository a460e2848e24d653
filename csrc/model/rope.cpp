#include "model/rope.h"

#include <cmath>

#include "core/error.h"

namespace llmcore {

std::vector<double> rope_inv_freq(const ModelConfig& c) {
  const int64_t dim = c.head_dim;
  LLMCORE_CHECK_ARG(dim > 0 && dim % 2 == 0, "RoPE needs an even head_dim >= 2, got ", dim);
  const RopeScaling& r = c.rope_scaling;
  std::vector<double> inv_freq(static_cast<size_t>(dim / 2));
  for (int64_t i = 0; i < dim / 2; ++i) {
    inv_freq[i] =
        1.0 / std::pow(c.rope_theta, static_cast<double>(2 * i) / static_cast<double>(dim));
  }
  if (r.rope_type == "default") return inv_freq;
  if (r.rope_type == "linear") {
    for (double& f : inv_freq) f /= r.factor;
    return inv_freq;
  }
  LLMCORE_CHECK_ARG(r.rope_type == "llama3", "rope_type '", r.rope_type,
                    "' is not supported (supported: default, linear, llama3)");
  LLMCORE_CHECK_ARG(
      r.high_freq_factor > r.low_freq_factor && r.original_max_position_embeddings > 0,
      "llama3 RoPE needs high_freq_factor > low_freq_factor and "
      "original_max_position_embeddings >= 1, got ",
      r.high_freq_factor, ", ", r.low_freq_factor, ", ", r.original_max_position_embeddings);
  // Wavelengths (in positions) shorter than the pretraining context / high_freq_factor keep their
  // frequency, longer than context / low_freq_factor are slowed by `factor`, and the band between
  // is interpolated smoothly (transformers' _compute_llama3_parameters).
  const double old_context = static_cast<double>(r.original_max_position_embeddings);
  const double low_freq_wavelen = old_context / r.low_freq_factor;
  const double high_freq_wavelen = old_context / r.high_freq_factor;
  for (double& f : inv_freq) {
    const double wavelen = 2.0 * M_PI / f;
    if (wavelen < high_freq_wavelen) continue;
    if (wavelen > low_freq_wavelen) {
      f /= r.factor;
      continue;
    }
    const double smooth =
        (old_context / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
    f = (1.0 - smooth) * f / r.factor + smooth * f;
  }
  return inv_freq;
}

Tensor build_rope_cos_sin(const ModelConfig& c, int64_t max_positions) {
  LLMCORE_CHECK_ARG(max_positions >= 1, "max_positions must be >= 1, got ", max_positions);
  const std::vector<double> inv_freq = rope_inv_freq(c);
  const int64_t half = static_cast<int64_t>(inv_freq.size());
  Tensor table = Tensor::empty({max_positions, 2 * half}, DType::kF32);
  float* out = table.data_as<float>();  // [max_positions, D]
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < max_positions; ++p) {
    float* row = out + p * 2 * half;
    for (int64_t i = 0; i < half; ++i) {
      const double angle = static_cast<double>(p) * inv_freq[i];
      row[i] = static_cast<float>(std::cos(angle));
      row[half + i] = static_cast<float>(std::sin(angle));
    }
  }
  return table;
}

}  // namespace llmcore
