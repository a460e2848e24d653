// Helpers shared by the backend tests: seeded random fills, NaN poison, host tensors.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/tensor.h"

namespace llmcore::testing {

inline float* f32(const Tensor& t) { return t.data_as<float>(); }
inline int32_t* i32(const Tensor& t) { return t.data_as<int32_t>(); }

// A float32 CPU tensor of uniform values in [lo, hi).
inline Tensor random_f32(Shape shape, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  Tensor t = Tensor::empty(std::move(shape), DType::kF32);
  std::uniform_real_distribution<float> dist(lo, hi);
  for (int64_t i = 0; i < t.numel(); ++i) f32(t)[i] = dist(rng);
  return t;
}

// A float32 CPU tensor full of NaN, so an element the op under test forgot to write shows up.
inline Tensor poisoned_f32(Shape shape) {
  Tensor t = Tensor::empty(std::move(shape), DType::kF32);
  std::fill(f32(t), f32(t) + t.numel(), std::numeric_limits<float>::quiet_NaN());
  return t;
}

inline Tensor int_tensor(const std::vector<int32_t>& values) {
  Tensor t = Tensor::empty({static_cast<int64_t>(values.size())}, DType::kI32);
  if (!values.empty()) std::memcpy(t.data(), values.data(), values.size() * sizeof(int32_t));
  return t;
}

inline bool same_bits(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

// Deep copy of a CPU tensor.
inline Tensor clone(const Tensor& t) {
  Tensor c = Tensor::empty(t.shape(), t.dtype());
  if (t.nbytes() > 0) std::memcpy(c.data(), t.data(), t.nbytes());
  return c;
}

// Largest |got - want| / (1 + |want|) over all elements; NaN in `got` gives +inf.
inline double max_scaled_error(const float* got, const std::vector<double>& want) {
  double worst = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(got[i])) return std::numeric_limits<double>::infinity();
    worst = std::max(worst, std::abs(got[i] - want[i]) / (1.0 + std::abs(want[i])));
  }
  return worst;
}

}  // namespace llmcore::testing
