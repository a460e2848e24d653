// Row-wise ops: embedding lookup, RMSNorm (plain and fused with the residual add), SwiGLU's
// silu-and-mul, and row gathers. One OpenMP iteration per row; within a row the order is fixed.
#include <cmath>
#include <cstring>

#include "backend/cpu/cpu_ops.h"

namespace llmcore::cpu {

namespace {

// out [n] = x [n] * rsqrt(mean(x^2) + eps) * weight [n], as HF's LlamaRMSNorm. The sum of
// squares runs in double in index order; out may alias x.
void rms_norm_row(float* out, const float* x, const float* weight, int64_t n, float eps) {
  double sum_sq = 0.0;
  for (int64_t i = 0; i < n; ++i) sum_sq += static_cast<double>(x[i]) * x[i];
  const float inv_rms = static_cast<float>(1.0 / std::sqrt(sum_sq / static_cast<double>(n) + eps));
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * inv_rms * weight[i];
}

// Throws unless every index in [n] int32 lies in [0, limit).
void check_indices(const int32_t* idx, int64_t n, int64_t limit, const char* what) {
  for (int64_t i = 0; i < n; ++i)
    LLMCORE_CHECK(idx[i] >= 0 && idx[i] < limit, what, "[", i, "] = ", idx[i], " is outside [0, ",
                  limit, ")");
}

}  // namespace

void embedding(Tensor& out, const Tensor& token_ids, const Tensor& table, int64_t vocab_start, int64_t vocab_size,
               int num_threads) {
  check_cpu_matrix(table, "embedding table");
  const int64_t rows = table.dim(0), hidden = table.dim(1);
  LLMCORE_CHECK(vocab_start >= 0 && vocab_size >= 0, "embedding vocab_start ", vocab_start, ", vocab_size ",
                vocab_size);
  LLMCORE_CHECK(token_ids.ndim() == 1, "token_ids must be 1-D, got ", shape_str(token_ids.shape()));
  const int64_t num_tokens = token_ids.dim(0);
  check_cpu(token_ids, "token_ids", DType::kI32, {num_tokens});
  check_cpu(out, "embedding out", DType::kF32, {num_tokens, hidden});
  const int32_t* ids = token_ids.data_as<int32_t>();
  check_indices(ids, num_tokens, vocab_size, "token_ids");

  const float* src = table.data_as<float>();  // [Vr, Hd]: ids [vocab_start, vocab_start + Vr)
  float* dst = out.data_as<float>();          // [T, Hd]
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t t = 0; t < num_tokens; ++t) {
    const int64_t local = static_cast<int64_t>(ids[t]) - vocab_start;
    if (local < 0 || local >= rows) {
      std::memset(dst + t * hidden, 0, static_cast<size_t>(hidden) * sizeof(float));  // another rank's id
    } else {
      std::memcpy(dst + t * hidden, src + local * hidden, static_cast<size_t>(hidden) * sizeof(float));
    }
  }
}

void rms_norm(Tensor& out, const Tensor& x, const Tensor& weight, float eps, int num_threads) {
  check_cpu_matrix(x, "rms_norm x");
  const int64_t num_tokens = x.dim(0), hidden = x.dim(1);
  check_cpu(out, "rms_norm out", DType::kF32, x.shape());
  check_cpu(weight, "rms_norm weight", DType::kF32, {hidden});
  LLMCORE_CHECK(hidden > 0, "rms_norm needs a non-empty hidden dimension");

  const float* in = x.data_as<float>();      // [T, Hd]
  const float* w = weight.data_as<float>();  // [Hd]
  float* dst = out.data_as<float>();         // [T, Hd]
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t t = 0; t < num_tokens; ++t)
    rms_norm_row(dst + t * hidden, in + t * hidden, w, hidden, eps);
}

void add_rms_norm(Tensor& x, Tensor& residual, const Tensor& weight, float eps, int num_threads) {
  check_cpu_matrix(x, "add_rms_norm x");
  const int64_t num_tokens = x.dim(0), hidden = x.dim(1);
  check_cpu(residual, "add_rms_norm residual", DType::kF32, x.shape());
  check_cpu(weight, "add_rms_norm weight", DType::kF32, {hidden});
  LLMCORE_CHECK(hidden > 0, "add_rms_norm needs a non-empty hidden dimension");
  LLMCORE_CHECK(x.data() != residual.data(), "add_rms_norm: x and residual must not alias");

  float* xs = x.data_as<float>();          // [T, Hd]: in: the block's output; out: normed
  float* res = residual.data_as<float>();  // [T, Hd]: the running residual stream
  const float* w = weight.data_as<float>();
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t t = 0; t < num_tokens; ++t) {
    float* x_row = xs + t * hidden;
    float* r_row = res + t * hidden;
    for (int64_t i = 0; i < hidden; ++i) r_row[i] += x_row[i];
    rms_norm_row(x_row, r_row, w, hidden, eps);
  }
}

void silu_and_mul(Tensor& out, const Tensor& x, int num_threads) {
  check_cpu_matrix(x, "silu_and_mul x");
  const int64_t num_tokens = x.dim(0);
  LLMCORE_CHECK(x.dim(1) % 2 == 0, "silu_and_mul x must have an even width, got ",
                shape_str(x.shape()));
  const int64_t inter = x.dim(1) / 2;
  check_cpu(out, "silu_and_mul out", DType::kF32, {num_tokens, inter});

  const float* in = x.data_as<float>();  // [T, 2I]: gate then up
  float* dst = out.data_as<float>();     // [T, I]
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t t = 0; t < num_tokens; ++t) {
    const float* gate = in + t * 2 * inter;
    const float* up = gate + inter;
    float* o = dst + t * inter;
    for (int64_t i = 0; i < inter; ++i) o[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
  }
}

void gather_rows(Tensor& out, const Tensor& x, const Tensor& indices, int num_threads) {
  LLMCORE_CHECK(x.device() == Device::kCPU && x.ndim() == 2,
                "gather_rows x must be a 2-D cpu tensor, got ", device_name(x.device()), " ",
                shape_str(x.shape()));
  LLMCORE_CHECK(indices.ndim() == 1, "gather_rows indices must be 1-D, got ",
                shape_str(indices.shape()));
  const int64_t num_rows = indices.dim(0), num_src = x.dim(0);
  check_cpu(indices, "gather_rows indices", DType::kI32, {num_rows});
  check_cpu(out, "gather_rows out", x.dtype(), {num_rows, x.dim(1)});
  const int32_t* idx = indices.data_as<int32_t>();
  check_indices(idx, num_rows, num_src, "gather_rows indices");

  const size_t row_bytes = static_cast<size_t>(x.dim(1)) * dtype_size(x.dtype());
  const char* src = static_cast<const char*>(x.data());  // [T, N]
  char* dst = static_cast<char*>(out.data());            // [L, N]
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t i = 0; i < num_rows; ++i)
    std::memcpy(dst + i * row_bytes, src + idx[i] * row_bytes, row_bytes);
}

}  // namespace llmcore::cpu
