// CPU backend memory ops, weight loading, and the row-wise ops (embedding, RMSNorm variants,
// silu_and_mul, gather_rows, rotary embedding), each against a naive double-precision loop.
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
using testing::int_tensor;
using testing::max_scaled_error;
using testing::poisoned_f32;
using testing::random_f32;

TEST(CpuBackend, Identity) {
  auto be = create_cpu_backend(0);
  EXPECT_EQ(be->device(), Device::kCPU);
  EXPECT_EQ(be->name(), "cpu");
  EXPECT_EQ(be->activation_dtype(), DType::kF32);
  be->synchronize();
  const Tensor t = be->empty({3, 4}, DType::kI32);
  EXPECT_EQ(t.shape(), (Shape{3, 4}));
  EXPECT_EQ(t.dtype(), DType::kI32);
  EXPECT_EQ(t.device(), Device::kCPU);
  EXPECT_NE(t.data(), nullptr);
}

TEST(CpuBackend, CopyChecksDtypeNumelAndDevice) {
  auto be = create_cpu_backend(2);
  std::mt19937 rng(31);
  const Tensor src = random_f32({6, 5}, rng);
  Tensor dst = poisoned_f32({30});  // same element count, other shape
  be->copy(dst, src);
  EXPECT_TRUE(testing::same_bits(dst, src));
  Tensor wrong_numel = poisoned_f32({29});
  EXPECT_THROW(be->copy(wrong_numel, src), Error);
  Tensor wrong_dtype = Tensor::empty({30}, DType::kI32);
  EXPECT_THROW(be->copy(wrong_dtype, src), Error);
  float fake[30];
  Tensor on_gpu = Tensor::wrap(fake, {30}, DType::kF32, Device::kCUDA);
  EXPECT_THROW(be->copy(on_gpu, src), Error);
  EXPECT_THROW(be->copy(dst, on_gpu), Error);
}

// Independent fp16 decoding: sign * 2^(e-15) * (1 + m/1024), subnormals 2^-14 * m/1024.
double fp16_value(uint16_t h) {
  const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  const double sign = (h & 0x8000) ? -1.0 : 1.0;
  if (e == 0) return sign * std::ldexp(m, -24);
  if (e == 31) return m ? NAN : sign * INFINITY;
  return sign * std::ldexp(1024 + m, e - 25);
}

TEST(CpuBackend, LoadWeightConvertsToF32) {
  auto be = create_cpu_backend(2);
  std::mt19937 rng(32);
  const int64_t n = 1 << 17;  // every fp16/bf16 bit pattern, twice
  Tensor halves = Tensor::empty({2, n / 2}, DType::kF16);
  Tensor brains = Tensor::empty({n}, DType::kBF16);
  for (int64_t i = 0; i < n; ++i) {
    halves.data_as<uint16_t>()[i] = static_cast<uint16_t>(i);
    brains.data_as<uint16_t>()[i] = static_cast<uint16_t>(i * 40503u);
  }
  const Tensor from_f16 = be->load_weight(halves);
  ASSERT_EQ(from_f16.dtype(), DType::kF32);
  ASSERT_EQ(from_f16.shape(), halves.shape());
  for (int64_t i = 0; i < n; ++i) {
    const double want = fp16_value(static_cast<uint16_t>(i));
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(f32(from_f16)[i])) << std::hex << i;
    } else {
      ASSERT_EQ(f32(from_f16)[i], static_cast<float>(want)) << std::hex << i;
    }
  }
  const Tensor from_bf16 = be->load_weight(brains);
  for (int64_t i = 0; i < n; ++i) {  // bf16 is the top half of a float32
    const uint32_t want = static_cast<uint32_t>(brains.data_as<uint16_t>()[i]) << 16;
    uint32_t got;
    std::memcpy(&got, f32(from_bf16) + i, 4);
    ASSERT_EQ(got, want) << i;
  }
  const Tensor floats = random_f32({7, 9}, rng);
  const Tensor from_f32 = be->load_weight(floats);
  EXPECT_NE(from_f32.data(), floats.data());  // a new tensor, not a view of the checkpoint
  EXPECT_TRUE(testing::same_bits(from_f32, floats));
  EXPECT_THROW(be->load_weight(Tensor::empty({4}, DType::kI32)), Error);
}

TEST(CpuBackend, EmbeddingAndGatherRows) {
  auto be = create_cpu_backend(2);
  std::mt19937 rng(33);
  const Tensor table = random_f32({50, 24}, rng);
  const std::vector<int32_t> ids = {49, 0, 7, 7, 23, 1, 48, 0, 12, 33, 2, 45, 19};
  Tensor out = poisoned_f32({13, 24});
  be->embedding(out, int_tensor(ids), table, 0, 50);
  for (size_t t = 0; t < ids.size(); ++t)
    EXPECT_EQ(std::memcmp(f32(out) + t * 24, f32(table) + ids[t] * 24, 24 * 4), 0) << t;
  EXPECT_THROW(be->embedding(out, int_tensor(std::vector<int32_t>(13, 50)), table, 0, 50), Error);
  EXPECT_THROW(be->embedding(out, int_tensor(std::vector<int32_t>(13, -1)), table, 0, 50), Error);

  // A vocab-parallel shard: rows 20..39 of the table hold ids 20..39 of a 50-id vocabulary; other
  // ids give zero rows, ids outside the vocabulary are still errors.
  const Tensor shard = Tensor::wrap(const_cast<float*>(f32(table)) + 20 * 24, {20, 24}, DType::kF32);
  Tensor part = poisoned_f32({13, 24});
  be->embedding(part, int_tensor(ids), shard, 20, 50);
  for (size_t t = 0; t < ids.size(); ++t) {
    if (ids[t] >= 20 && ids[t] < 40) {
      EXPECT_EQ(std::memcmp(f32(part) + t * 24, f32(table) + ids[t] * 24, 24 * 4), 0) << t;
    } else {
      for (int c = 0; c < 24; ++c) EXPECT_EQ(f32(part)[t * 24 + c], 0.0f) << t;
    }
  }
  EXPECT_THROW(be->embedding(part, int_tensor(std::vector<int32_t>(13, 50)), shard, 20, 50), Error);

  const Tensor x = random_f32({10, 7}, rng);
  const std::vector<int32_t> rows = {9, 0, 0, 4};
  Tensor gathered = poisoned_f32({4, 7});
  be->gather_rows(gathered, x, int_tensor(rows));
  for (size_t i = 0; i < rows.size(); ++i)
    EXPECT_EQ(std::memcmp(f32(gathered) + i * 7, f32(x) + rows[i] * 7, 7 * 4), 0) << i;
  EXPECT_THROW(be->gather_rows(gathered, x, int_tensor({0, 1, 10, 2})), Error);
}

// x [T, Hd] -> x * (1 / sqrt(mean(x^2) + eps)) * w, in double.
std::vector<double> reference_rms_norm(const float* x, const float* w, int64_t T, int64_t Hd,
                                       double eps) {
  std::vector<double> out(static_cast<size_t>(T * Hd));
  for (int64_t t = 0; t < T; ++t) {
    double sum_sq = 0.0;
    for (int64_t i = 0; i < Hd; ++i) sum_sq += double(x[t * Hd + i]) * x[t * Hd + i];
    const double inv = 1.0 / std::sqrt(sum_sq / Hd + eps);
    for (int64_t i = 0; i < Hd; ++i) out[t * Hd + i] = x[t * Hd + i] * inv * w[i];
  }
  return out;
}

TEST(CpuBackend, RmsNormOutOfPlaceAndInPlace) {
  auto be = create_cpu_backend(2);
  std::mt19937 rng(34);
  const int64_t T = 7, Hd = 1000;
  const float eps = 1e-5f;
  Tensor x = random_f32({T, Hd}, rng, -2.0f, 2.0f);
  // A row so small that eps dominates: tells eps-inside-the-sqrt from other placements.
  for (int64_t i = 0; i < Hd; ++i) f32(x)[3 * Hd + i] *= 1e-3f;
  const Tensor w = random_f32({Hd}, rng, 0.5f, 1.5f);
  const std::vector<double> ref = reference_rms_norm(f32(x), f32(w), T, Hd, eps);
  Tensor out = poisoned_f32({T, Hd});
  be->rms_norm(out, x, w, eps);
  EXPECT_LT(max_scaled_error(f32(out), ref), 1e-6);
  be->rms_norm(x, x, w, eps);  // in place
  EXPECT_TRUE(testing::same_bits(x, out));
  Tensor bad_weight = random_f32({Hd + 1}, rng);
  EXPECT_THROW(be->rms_norm(out, x, bad_weight, eps), Error);
}

TEST(CpuBackend, AddRmsNormUpdatesResidualThenNormalizes) {
  auto be = create_cpu_backend(2);
  std::mt19937 rng(35);
  const int64_t T = 5, Hd = 333;
  const float eps = 1e-6f;
  Tensor x = random_f32({T, Hd}, rng);
  Tensor residual = random_f32({T, Hd}, rng, -3.0f, 3.0f);
  const Tensor w = random_f32({Hd}, rng, 0.5f, 1.5f);
  std::vector<float> summed(static_cast<size_t>(T * Hd));
  for (int64_t i = 0; i < T * Hd; ++i) summed[i] = f32(x)[i] + f32(residual)[i];  // one rounding
  const std::vector<double> ref = reference_rms_norm(summed.data(), f32(w), T, Hd, eps);
  be->add_rms_norm(x, residual, w, eps);
  EXPECT_EQ(std::memcmp(f32(residual), summed.data(), summed.size() * 4), 0);
  EXPECT_LT(max_scaled_error(f32(x), ref), 1e-6);
}

TEST(CpuBackend, SiluAndMul) {
  auto be = create_cpu_backend(2);
  std::mt19937 rng(36);
  const int64_t T = 5, I = 37;
  Tensor x = random_f32({T, 2 * I}, rng, -6.0f, 6.0f);
  f32(x)[0] = 30.0f;   // silu(30) ~ 30
  f32(x)[1] = -30.0f;  // silu(-30) ~ -2.8e-12
  std::vector<double> ref(static_cast<size_t>(T * I));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < I; ++i) {
      const double g = f32(x)[t * 2 * I + i], u = f32(x)[t * 2 * I + I + i];
      ref[t * I + i] = g / (1.0 + std::exp(-g)) * u;
    }
  Tensor out = poisoned_f32({T, I});
  be->silu_and_mul(out, x);
  EXPECT_LT(max_scaled_error(f32(out), ref), 1e-6);
  Tensor wrong = poisoned_f32({T, I + 1});
  EXPECT_THROW(be->silu_and_mul(wrong, x), Error);
}

TEST(CpuBackend, RotaryEmbeddingRotatesQAndKHalves) {
  auto be = create_cpu_backend(2);
  std::mt19937 rng(37);
  const AttnShape shape{4, 2, 64};
  const int D = 64, half = 32, max_pos = 1000, width = shape.qkv_width();
  const double theta = 10000.0;
  // cos_sin [max_pos, D]: cos of pos * theta^(-2i/D) for i < D/2, then the sines.
  Tensor cos_sin = Tensor::empty({max_pos, D}, DType::kF32);
  for (int p = 0; p < max_pos; ++p)
    for (int i = 0; i < half; ++i) {
      const double angle = p * std::pow(theta, -2.0 * i / D);
      f32(cos_sin)[p * D + i] = static_cast<float>(std::cos(angle));
      f32(cos_sin)[p * D + half + i] = static_cast<float>(std::sin(angle));
    }
  const std::vector<int32_t> positions = {0, 1, 999, 17, 17, 512, 3, 250, 64};
  const int T = static_cast<int>(positions.size());
  Tensor qkv = random_f32({T, width}, rng);
  const Tensor before = testing::clone(qkv);
  be->rotary_embedding(qkv, int_tensor(positions), cos_sin, shape);

  std::vector<double> ref(static_cast<size_t>(T) * width);
  for (int t = 0; t < T; ++t)
    for (int h = 0; h < 8; ++h)  // 4 q heads, 2 k heads, 2 v heads
      for (int i = 0; i < half; ++i) {
        const float* x = f32(before) + t * width + h * D;
        double* r = ref.data() + static_cast<size_t>(t) * width + h * D;
        if (h >= 6) {  // v heads are not rotated
          r[i] = x[i];
          r[i + half] = x[i + half];
          continue;
        }
        const double angle = positions[t] * std::pow(theta, -2.0 * i / D);
        const double c = std::cos(angle), s = std::sin(angle);
        r[i] = x[i] * c - x[i + half] * s;
        r[i + half] = x[i + half] * c + x[i] * s;
      }
  EXPECT_LT(max_scaled_error(f32(qkv), ref), 1e-6);
  for (int t = 0; t < T; ++t)  // v bits untouched
    EXPECT_EQ(std::memcmp(f32(qkv) + t * width + 6 * D, f32(before) + t * width + 6 * D, 2 * D * 4),
              0);
  EXPECT_THROW(
      be->rotary_embedding(qkv, int_tensor(std::vector<int32_t>(T, max_pos)), cos_sin, shape),
      Error);
  EXPECT_THROW(be->rotary_embedding(qkv, int_tensor(positions), cos_sin, {4, 2, 63}), Error);
}

}  // namespace
}  // namespace llmcore
