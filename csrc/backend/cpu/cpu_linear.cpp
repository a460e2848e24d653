// linear: out [T, N] = x [T, K] @ weight [N, K]^T (+ bias), through BLAS, batch invariant.
//
// Why tiles: a GEMM library picks kernels, blockings and thread splits from the matrix sizes, so
// the bits of row t could change with T (the number of tokens in the step) and the engine's
// greedy output would depend on which other requests share the step. Here every sgemm call has
// the same shape: kRowTile tokens (the last partial tile is zero-padded through a scratch copy)
// by at most kColTile output features (the split depends only on N), on one thread.
//
// Why transposed: within one call, a GEMM micro-kernel keeps one operand dimension in SIMD lanes
// (all lanes run the same instructions) and register-blocks the other, handling its remainder
// with different code (OpenBLAS on Zen, x_tile @ weight_tile^T: the same row came out with
// different bits in slots 6-11 and 12-15 of a 16-row tile than in slots 0-5). So each call
// computes y [cols, kRowTile] = weight_tile @ x_tile^T, which puts the tokens on the lane
// dimension: a token's bits then do not depend on its slot in the tile. y is transposed into
// out while the bias is added.
#include <cblas.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <vector>

#include "backend/cpu/cpu_ops.h"

namespace llmcore::cpu {

namespace {

constexpr int64_t kRowTile = 16;  // rows (tokens) per sgemm call, always full
constexpr int64_t kColTile = 64;  // output features per sgemm call (fewer in the last tile)

}  // namespace

void linear(Tensor& out, const Tensor& x, const Tensor& weight, const Tensor* bias,
            int num_threads) {
  check_cpu_matrix(x, "linear x");
  check_cpu_matrix(weight, "linear weight");
  const int64_t num_tokens = x.dim(0), in_features = x.dim(1), out_features = weight.dim(0);
  LLMCORE_CHECK(weight.dim(1) == in_features, "linear: x ", shape_str(x.shape()),
                " does not match weight ", shape_str(weight.shape()));
  check_cpu(out, "linear out", DType::kF32, {num_tokens, out_features});
  if (bias) check_cpu(*bias, "linear bias", DType::kF32, {out_features});
  LLMCORE_CHECK(in_features <= INT_MAX && out_features <= INT_MAX,
                "linear: BLAS takes int dimensions, got weight ", shape_str(weight.shape()));
  LLMCORE_CHECK(out.data() != x.data(), "linear: out must not alias x");
  if (num_tokens == 0 || out_features == 0) return;

  const float* xs = x.data_as<float>();                      // [T, K]
  const float* w = weight.data_as<float>();                  // [N, K]
  float* dst = out.data_as<float>();                         // [T, N]
  const float* b = bias ? bias->data_as<float>() : nullptr;  // [N] or null
  if (in_features == 0) {
    for (int64_t t = 0; t < num_tokens; ++t)
      for (int64_t n = 0; n < out_features; ++n) dst[t * out_features + n] = b ? b[n] : 0.0f;
    return;
  }

  const int64_t num_full_tiles = num_tokens / kRowTile;
  const int64_t tail_rows = num_tokens % kRowTile;
  const int64_t num_row_tiles = num_full_tiles + (tail_rows > 0 ? 1 : 0);
  const int64_t num_col_tiles = (out_features + kColTile - 1) / kColTile;

  // The last partial tile runs as a full one: its rows copied into zeroed scratch [kRowTile, K].
  std::vector<float> x_tail;
  if (tail_rows > 0) {
    x_tail.assign(static_cast<size_t>(kRowTile * in_features), 0.0f);
    std::memcpy(x_tail.data(), xs + num_full_tiles * kRowTile * in_features,
                static_cast<size_t>(tail_rows * in_features) * sizeof(float));
  }

#pragma omp parallel num_threads(num_threads)
  {
    std::vector<float> y(static_cast<size_t>(kColTile * kRowTile));  // [cols, kRowTile]
    // Column tiles outermost: a thread's consecutive iterations reuse one weight tile in cache.
#pragma omp for collapse(2) schedule(static)
    for (int64_t c = 0; c < num_col_tiles; ++c) {
      for (int64_t r = 0; r < num_row_tiles; ++r) {
        const int64_t n0 = c * kColTile;
        const int64_t num_cols = std::min(kColTile, out_features - n0);
        const bool full = r < num_full_tiles;
        const float* a = full ? xs + r * kRowTile * in_features : x_tail.data();  // [16, K]
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(num_cols),
                    static_cast<int>(kRowTile), static_cast<int>(in_features), 1.0f,
                    w + n0 * in_features, static_cast<int>(in_features), a,
                    static_cast<int>(in_features), 0.0f, y.data(), static_cast<int>(kRowTile));
        const int64_t num_rows = full ? kRowTile : tail_rows;
        for (int64_t i = 0; i < num_rows; ++i) {
          float* o = dst + (r * kRowTile + i) * out_features + n0;  // [num_cols]
          for (int64_t n = 0; n < num_cols; ++n)
            o[n] = b ? y[n * kRowTile + i] + b[n0 + n] : y[n * kRowTile + i];
        }
      }
    }
  }
}

}  // namespace llmcore::cpu
