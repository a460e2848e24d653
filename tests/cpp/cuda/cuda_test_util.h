// Helpers shared by the CUDA backend tests: skipping without a GPU, host <-> device tensors in
// the 16-bit activation dtypes, NaN-poisoned outputs, and tolerance checks against the CPU
// backend (which computes in fp32 on the same, exactly representable, inputs).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_device.h"
#include "core/dtype.h"
#include "core/tensor.h"

// Every test starts with this: CI machines without a GPU skip instead of failing.
#define LLMCORE_SKIP_WITHOUT_CUDA()                                             \
  do {                                                                          \
    if (::llmcore::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

namespace llmcore::cuda_testing {

inline const char* short_name(DType t) { return t == DType::kBF16 ? "bf16" : "fp16"; }

// The value a float takes when stored as `dtype` (bf16/fp16) or left as float32.
inline float round_to(float f, DType dtype) {
  if (dtype == DType::kBF16) return bf16_to_float(float_to_bf16(f));
  if (dtype == DType::kF16) return fp16_to_float(float_to_fp16(f));
  return f;
}

// A float32 CPU tensor of uniform values in [lo, hi), each exactly representable in `dtype`, so
// the CPU backend and the GPU see the same numbers.
inline Tensor random_rounded(Shape shape, DType dtype, std::mt19937& rng, float lo = -1.0f,
                             float hi = 1.0f) {
  Tensor t = Tensor::empty(std::move(shape), DType::kF32);
  std::uniform_real_distribution<float> dist(lo, hi);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = round_to(dist(rng), dtype);
  return t;
}

// float32 CPU tensor -> CPU tensor of `dtype` bits (bf16/fp16 rounded to nearest even).
inline Tensor to_host_dtype(const Tensor& f32, DType dtype) {
  if (dtype == DType::kF32) {
    Tensor c = Tensor::empty(f32.shape(), DType::kF32);
    if (f32.nbytes()) std::memcpy(c.data(), f32.data(), f32.nbytes());
    return c;
  }
  Tensor t = Tensor::empty(f32.shape(), dtype);
  for (int64_t i = 0; i < f32.numel(); ++i) {
    const float f = f32.data_as<float>()[i];
    t.data_as<uint16_t>()[i] = dtype == DType::kBF16 ? float_to_bf16(f) : float_to_fp16(f);
  }
  return t;
}

// CPU tensor of bf16/fp16/f32 -> float32 CPU tensor.
inline Tensor to_f32(const Tensor& t) {
  Tensor out = Tensor::empty(t.shape(), DType::kF32);
  for (int64_t i = 0; i < t.numel(); ++i) {
    float f;
    if (t.dtype() == DType::kF32) {
      f = t.data_as<float>()[i];
    } else {
      const uint16_t h = t.data_as<uint16_t>()[i];
      f = t.dtype() == DType::kBF16 ? bf16_to_float(h) : fp16_to_float(h);
    }
    out.data_as<float>()[i] = f;
  }
  return out;
}

// A GPU copy of a CPU tensor (any dtype).
inline Tensor upload(Backend& be, const Tensor& host) {
  Tensor d = be.empty(host.shape(), host.dtype());
  be.copy(d, host);
  return d;
}

// float32 CPU values -> GPU tensor of `dtype`.
inline Tensor upload_as(Backend& be, const Tensor& f32, DType dtype) {
  return upload(be, to_host_dtype(f32, dtype));
}

// A CPU copy of a GPU tensor (same dtype).
inline Tensor download(Backend& be, const Tensor& dev) {
  Tensor h = Tensor::empty(dev.shape(), dev.dtype());
  be.copy(h, dev);
  return h;
}

// GPU tensor -> float32 CPU values.
inline Tensor download_f32(Backend& be, const Tensor& dev) { return to_f32(download(be, dev)); }

// A GPU tensor whose bytes are all 0xff: NaN for every float dtype, -1 for int32. An element the
// op under test forgot to write stays NaN and fails every tolerance check.
inline Tensor poisoned(Backend& be, Shape shape, DType dtype) {
  Tensor h = Tensor::empty(std::move(shape), dtype);
  if (h.nbytes()) std::memset(h.data(), 0xff, h.nbytes());
  return upload(be, h);
}

inline Tensor int_tensor(const std::vector<int32_t>& values) {
  Tensor t = Tensor::empty({static_cast<int64_t>(values.size())}, DType::kI32);
  if (!values.empty()) std::memcpy(t.data(), values.data(), values.size() * sizeof(int32_t));
  return t;
}

inline bool same_bits(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

// Checks |got[i] - want[i]| <= rtol * |want[i]| + atol[i] for every element (atol per element,
// or one value for all when atol has size 1). NaN or inf in `got` fails. Returns a gtest result
// naming the worst element.
inline ::testing::AssertionResult all_close(const Tensor& got_f32, const Tensor& want_f32,
                                            double rtol, const std::vector<double>& atol) {
  if (got_f32.numel() != want_f32.numel())
    return ::testing::AssertionFailure()
           << "sizes differ: " << got_f32.numel() << " vs " << want_f32.numel();
  const float* got = got_f32.data_as<float>();
  const float* want = want_f32.data_as<float>();
  int64_t bad = 0, worst_i = -1;
  double worst_ratio = 0.0;
  for (int64_t i = 0; i < got_f32.numel(); ++i) {
    const double a = atol.size() == 1 ? atol[0] : atol[static_cast<size_t>(i)];
    const double bound = rtol * std::abs(static_cast<double>(want[i])) + a;
    const double err = std::abs(static_cast<double>(got[i]) - want[i]);
    const double ratio =
        std::isfinite(got[i]) ? err / bound : std::numeric_limits<double>::infinity();
    if (!(ratio <= 1.0)) ++bad;
    if (worst_i < 0 || !(ratio <= worst_ratio)) {
      worst_ratio = ratio;
      worst_i = i;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << bad << " of " << got_f32.numel() << " elements out of tolerance; worst at " << worst_i
         << ": got " << got[worst_i] << ", want " << want[worst_i] << " (error/bound "
         << worst_ratio << ")";
}

inline ::testing::AssertionResult all_close(const Tensor& got_f32, const Tensor& want_f32,
                                            double rtol, double atol) {
  return all_close(got_f32, want_f32, rtol, std::vector<double>{atol});
}

// Relative tolerance for one rounding to `dtype` plus fp32 noise, times `roundings`.
inline double rounding_rtol(DType dtype, int roundings) {
  const double unit = dtype == DType::kBF16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
  return roundings * unit;
}

inline std::unique_ptr<Backend> make_backend(DType dtype) { return create_cuda_backend(0, dtype); }

// Euclidean norm of each row of a float32 [R, C] CPU tensor, in double (linear tests bound the
// fp32 accumulation error by |x_t| |w_n|).
inline std::vector<double> row_norms(const Tensor& t) {
  const int64_t rows = t.dim(0), cols = t.dim(1);
  std::vector<double> norms(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    double s = 0.0;
    for (int64_t c = 0; c < cols; ++c) {
      const double v = t.data_as<float>()[r * cols + c];
      s += v * v;
    }
    norms[static_cast<size_t>(r)] = std::sqrt(s);
  }
  return norms;
}

// Rows of a float CPU tensor picked by `rows` (repeats allowed).
inline Tensor pick_rows(const Tensor& t, const std::vector<int64_t>& rows) {
  const int64_t cols = t.dim(1);
  Tensor out = Tensor::empty({static_cast<int64_t>(rows.size()), cols}, DType::kF32);
  for (size_t i = 0; i < rows.size(); ++i)
    std::memcpy(out.data_as<float>() + i * cols, t.data_as<float>() + rows[i] * cols,
                static_cast<size_t>(cols) * sizeof(float));
  return out;
}

}  // namespace llmcore::cuda_testing
