// The RoPE cos/sin table against the frequency formulas re-derived here from the papers /
// transformers' descriptions (default, linear "position interpolation", Llama 3.1 band scaling).
#include <gtest/gtest.h>

#include <cmath>

#include "model/rope.h"

namespace llmcore {
namespace {

ModelConfig rope_config(int64_t head_dim, double theta) {
  ModelConfig c;
  c.head_dim = head_dim;
  c.rope_theta = theta;
  return c;
}

// Checks row p of the table holds cos(p * f_i) then sin(p * f_i).
void expect_table(const Tensor& table, const std::vector<double>& freqs,
                  std::initializer_list<int64_t> positions) {
  const int64_t half = static_cast<int64_t>(freqs.size());
  ASSERT_EQ(table.dtype(), DType::kF32);
  ASSERT_EQ(table.dim(1), 2 * half);
  const float* t = table.data_as<float>();
  for (int64_t p : positions) {
    ASSERT_LT(p, table.dim(0));
    for (int64_t i = 0; i < half; ++i) {
      const long double angle = static_cast<long double>(p) * freqs[i];
      EXPECT_NEAR(t[p * 2 * half + i], static_cast<double>(cosl(angle)), 2e-7)
          << "p=" << p << " i=" << i;
      EXPECT_NEAR(t[p * 2 * half + half + i], static_cast<double>(sinl(angle)), 2e-7)
          << "p=" << p << " i=" << i;
    }
  }
}

TEST(Rope, DefaultTable) {
  const ModelConfig c = rope_config(8, 10000.0);
  const Tensor table = build_rope_cos_sin(c, 50);
  EXPECT_EQ(table.shape(), (Shape{50, 8}));
  // theta^(-2i/D) for D = 8: 1, 10000^-0.25 = 0.1, 0.01, 0.001.
  expect_table(table, {1.0, 0.1, 0.01, 0.001}, {0, 1, 2, 17, 49});
}

TEST(Rope, LinearScalingDividesFrequencies) {
  ModelConfig c = rope_config(4, 100.0);
  c.rope_scaling.rope_type = "linear";
  c.rope_scaling.factor = 4.0;
  // 100^(-2i/4): 1, 0.1; divided by 4.
  expect_table(build_rope_cos_sin(c, 300), {0.25, 0.025}, {0, 3, 299});
}

// Llama 3.1: with context C, high/low factors h/l and scale s, a frequency f of wavelength
// w = 2 pi / f is kept when w < C / h, divided by s when w > C / l, and in between is the mix
// (1 - a) f / s + a f with a = (C / w - l) / (h - l).
double llama3_reference(double f, double s, double l, double h, double context) {
  const double w = 2 * M_PI / f;
  if (w < context / h) return f;
  if (w > context / l) return f / s;
  const double a = (context / w - l) / (h - l);
  return (1 - a) * f / s + a * f;
}

TEST(Rope, Llama3ScalingMatchesFormula) {
  ModelConfig c = rope_config(128, 500000.0);
  c.rope_scaling.rope_type = "llama3";
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 8192;

  std::vector<double> want(64);
  int kept = 0, scaled = 0, mixed = 0;
  for (int i = 0; i < 64; ++i) {
    const double f = std::pow(500000.0, -static_cast<double>(2 * i) / 128.0);
    want[i] = llama3_reference(f, 8.0, 1.0, 4.0, 8192.0);
    if (want[i] == f) {
      ++kept;
    } else if (want[i] == f / 8.0) {
      ++scaled;
    } else {
      ++mixed;
    }
  }
  // The configuration exercises all three bands.
  EXPECT_GT(kept, 0);
  EXPECT_GT(scaled, 0);
  EXPECT_GT(mixed, 0);

  const std::vector<double> got = rope_inv_freq(c);
  ASSERT_EQ(got.size(), 64u);
  for (int i = 0; i < 64; ++i) EXPECT_NEAR(got[i], want[i], 1e-15 + 1e-12 * want[i]) << i;
  expect_table(build_rope_cos_sin(c, 8200), want, {0, 1, 5, 1000, 8191, 8199});
}

TEST(Rope, Llama3BandsAreContinuous) {
  // At the band edges the interpolation meets the kept / scaled values, so the scaled
  // frequencies decrease monotonically with i.
  ModelConfig c = rope_config(256, 500000.0);
  c.rope_scaling.rope_type = "llama3";
  c.rope_scaling.factor = 32.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 8.0;
  c.rope_scaling.original_max_position_embeddings = 8192;
  const std::vector<double> f = rope_inv_freq(c);
  for (size_t i = 1; i < f.size(); ++i) EXPECT_LT(f[i], f[i - 1]) << i;
}

TEST(Rope, RejectsBadInputs) {
  ModelConfig c = rope_config(8, 10000.0);
  c.rope_scaling.rope_type = "yarn";
  EXPECT_THROW(build_rope_cos_sin(c, 4), Error);
  EXPECT_THROW(build_rope_cos_sin(rope_config(8, 10000.0), 0), Error);
  EXPECT_THROW(build_rope_cos_sin(rope_config(7, 10000.0), 4), Error);
}

}  // namespace
}  // namespace llmcore
