// CPU linear: accuracy against a double-precision loop, and batch invariance (a row's bits do
// not depend on the number of rows, their contents, the row's position or the thread count).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "backend/backend_test_util.h"

namespace llmcore {
namespace {

using testing::f32;
using testing::poisoned_f32;
using testing::random_f32;

// out [T, N] = x [T, K] @ w [N, K]^T + bias, in double.
std::vector<double> reference_linear(const Tensor& x, const Tensor& w, const Tensor* bias) {
  const int64_t T = x.dim(0), K = x.dim(1), N = w.dim(0);
  std::vector<double> out(static_cast<size_t>(T * N));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double acc = bias ? f32(*bias)[n] : 0.0;
      for (int64_t k = 0; k < K; ++k) acc += double(f32(x)[t * K + k]) * f32(w)[n * K + k];
      out[static_cast<size_t>(t * N + n)] = acc;
    }
  return out;
}

Tensor run_linear(Backend& be, const Tensor& x, const Tensor& w, const Tensor* bias) {
  Tensor out = poisoned_f32({x.dim(0), w.dim(0)});
  be.linear(out, x, w, bias);
  return out;
}

bool row_equal(const Tensor& a, int64_t ra, const Tensor& b, int64_t rb) {
  const int64_t n = a.dim(1);
  return std::memcmp(f32(a) + ra * n, f32(b) + rb * n, static_cast<size_t>(n) * 4) == 0;
}

// K > OpenBLAS's K blocking and N spanning a full and a partial column tile.
constexpr int64_t kIn = 700, kOut = 300;

TEST(CpuLinear, MatchesDoubleReference) {
  auto be = create_cpu_backend(2);
  std::mt19937 rng(11);
  const Tensor w = random_f32({kOut, kIn}, rng);
  const Tensor bias = random_f32({kOut}, rng);
  for (int64_t T : {1, 3, 17, 64, 100}) {
    for (const Tensor* b : {static_cast<const Tensor*>(nullptr), &bias}) {
      const Tensor x = random_f32({T, kIn}, rng);
      const Tensor out = run_linear(*be, x, w, b);
      const std::vector<double> ref = reference_linear(x, w, b);
      double max_err = 0.0, max_ref = 0.0;
      for (size_t i = 0; i < ref.size(); ++i) {
        ASSERT_TRUE(std::isfinite(f32(out)[i])) << "T=" << T << " element " << i;
        max_err = std::max(max_err, std::abs(f32(out)[i] - ref[i]));
        max_ref = std::max(max_ref, std::abs(ref[i]));
      }
      EXPECT_LT(max_err / max_ref, 1e-5) << "T=" << T << " bias=" << (b != nullptr);
    }
  }
}

TEST(CpuLinear, RowBitsDoNotDependOnBatch) {
  auto be = create_cpu_backend(2);
  std::mt19937 rng(12);
  const Tensor w = random_f32({kOut, kIn}, rng);
  const Tensor bias = random_f32({kOut}, rng);
  for (int64_t T : {1, 3, 17, 64, 100}) {
    const Tensor x = random_f32({T, kIn}, rng);
    const Tensor out = run_linear(*be, x, w, &bias);
    // Different neighbours, a different batch size, the row at a different position.
    const int64_t T2 = T + 21;
    for (int64_t t = 0; t < T; ++t) {
      const Tensor alone = run_linear(*be, x.narrow_rows(t, 1), w, &bias);
      ASSERT_TRUE(row_equal(out, t, alone, 0)) << "T=" << T << " row " << t << " alone";
      if (t % 7 != 0 && t != T - 1) continue;  // the embedded check on a sample of rows
      Tensor mixed = random_f32({T2, kIn}, rng, -3.0f, 3.0f);
      const int64_t p = (t * 5 + 9) % T2;
      std::memcpy(f32(mixed) + p * kIn, f32(x) + t * kIn, kIn * 4);
      const Tensor mixed_out = run_linear(*be, mixed, w, &bias);
      ASSERT_TRUE(row_equal(out, t, mixed_out, p)) << "T=" << T << " row " << t << " at " << p;
    }
  }
}

TEST(CpuLinear, BitsDoNotDependOnThreadCount) {
  std::mt19937 rng(13);
  const Tensor w = random_f32({600, 2048}, rng);
  const Tensor x = random_f32({37, 2048}, rng);
  auto one = create_cpu_backend(1);
  const Tensor want = run_linear(*one, x, w, nullptr);
  for (int threads : {2, 3, 0}) {
    auto be = create_cpu_backend(threads);
    EXPECT_TRUE(testing::same_bits(run_linear(*be, x, w, nullptr), want)) << threads << " threads";
  }
  // A row from a realistic-size batch equals the row computed alone.
  EXPECT_TRUE(row_equal(want, 30, run_linear(*one, x.narrow_rows(30, 1), w, nullptr), 0));
}

TEST(CpuLinear, EdgeShapes) {
  auto be = create_cpu_backend(2);
  std::mt19937 rng(14);
  // K = 0: the product is empty, out = bias.
  const Tensor bias = random_f32({5}, rng);
  Tensor out = poisoned_f32({3, 5});
  be->linear(out, Tensor::empty({3, 0}, DType::kF32), Tensor::empty({5, 0}, DType::kF32), &bias);
  for (int t = 0; t < 3; ++t)
    for (int n = 0; n < 5; ++n) EXPECT_EQ(f32(out)[t * 5 + n], f32(bias)[n]);
  // T = 0 writes nothing and does not fail.
  Tensor none = Tensor::empty({0, 5}, DType::kF32);
  be->linear(none, Tensor::empty({0, 4}, DType::kF32), random_f32({5, 4}, rng), nullptr);
  // N = 1 (a single output feature) and K = 1.
  const Tensor x = random_f32({20, 1}, rng), w = random_f32({1, 1}, rng);
  const Tensor o = run_linear(*be, x, w, nullptr);
  for (int t = 0; t < 20; ++t) EXPECT_FLOAT_EQ(f32(o)[t], f32(x)[t] * f32(w)[0]);
}

TEST(CpuLinear, RejectsMismatchedShapes) {
  auto be = create_cpu_backend(1);
  std::mt19937 rng(15);
  const Tensor x = random_f32({4, 8}, rng), w = random_f32({6, 8}, rng);
  Tensor wrong_out = poisoned_f32({4, 5});
  EXPECT_THROW(be->linear(wrong_out, x, w, nullptr), Error);
  Tensor out = poisoned_f32({4, 6});
  EXPECT_THROW(be->linear(out, x, random_f32({6, 7}, rng), nullptr), Error);
  const Tensor bad_bias = random_f32({5}, rng);
  EXPECT_THROW(be->linear(out, x, w, &bad_bias), Error);
  EXPECT_THROW(create_cpu_backend(-1), Error);
}

}  // namespace
}  // namespace llmcore
