// linear through cuBLASLt: against the CPU backend (fp32 BLAS on the same, exactly representable
// inputs) for bf16 and fp16, with and without bias, 16-bit and float32 outputs, shapes that are
// and are not multiples of 8; and batch invariance: a row's output bits do not depend on how
// many rows share the call, where the row sits, or whether the tensors are aligned views.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "cuda_test_util.h"

namespace llmcore {
namespace {

using namespace cuda_testing;

struct LinearCase {
  int64_t n, k;
};

// GPU linear vs CPU linear. The bound per element is one rounding of the output plus an fp32
// accumulation allowance of kAccum * |x_t| |w_n| (Cauchy-Schwarz bounds sum_k |x_tk w_nk|).
void check_linear(Backend& cpu, Backend& be, DType dt, const LinearCase& c, int64_t tokens,
                  bool with_bias, bool f32_out, std::mt19937& rng) {
  constexpr double kAccum = 5e-5;
  const Tensor x = random_rounded({tokens, c.k}, dt, rng);
  const Tensor w = random_rounded({c.n, c.k}, dt, rng);
  const Tensor bias = random_rounded({c.n}, dt, rng);
  Tensor want = Tensor::empty({tokens, c.n}, DType::kF32);
  cpu.linear(want, x, w, with_bias ? &bias : nullptr);

  const DType out_dt = f32_out ? DType::kF32 : dt;
  Tensor out = poisoned(be, {tokens, c.n}, out_dt);
  const Tensor bias_dev = upload_as(be, bias, dt);
  be.linear(out, upload_as(be, x, dt), be.load_weight(w), with_bias ? &bias_dev : nullptr);

  const std::vector<double> xn = row_norms(x), wn = row_norms(w);
  std::vector<double> atol(static_cast<size_t>(tokens * c.n));
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < c.n; ++j)
      atol[static_cast<size_t>(t * c.n + j)] = kAccum * xn[t] * wn[j] + 1e-6;
  const double rtol = f32_out ? 1e-6 : rounding_rtol(dt, 1);
  EXPECT_TRUE(all_close(download_f32(be, out), want, rtol, atol))
      << short_name(dt) << " N " << c.n << " K " << c.k << " T " << tokens
      << (with_bias ? " bias" : "") << (f32_out ? " f32 out" : "");
}

TEST(CudaLinear, MatchesCpu) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  auto cpu = create_cpu_backend(0);
  std::mt19937 rng(301);
  for (DType dt : {DType::kBF16, DType::kF16}) {
    auto be = make_backend(dt);
    for (const LinearCase& c : {LinearCase{64, 64}, LinearCase{100, 37}, LinearCase{1000, 512},
                                LinearCase{3, 5}, LinearCase{256, 2048}}) {
      for (int64_t tokens : {1, 7, 64, 256}) {
        for (int combo = 0; combo < 4; ++combo)
          check_linear(*cpu, *be, dt, c, tokens, combo & 1, combo & 2, rng);
      }
    }
    // A model-sized square weight, fewer combinations.
    for (int64_t tokens : {1, 256}) {
      check_linear(*cpu, *be, dt, {4096, 4096}, tokens, false, false, rng);
      check_linear(*cpu, *be, dt, {4096, 4096}, tokens, true, true, rng);
    }
  }
}

TEST(CudaLinear, EmptyDimensions) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  std::mt19937 rng(302);
  auto be = make_backend(DType::kBF16);
  const DType dt = DType::kBF16;
  // K == 0: an empty sum, so out = bias (or 0).
  const Tensor bias = random_rounded({5}, dt, rng);
  for (DType out_dt : {dt, DType::kF32}) {
    Tensor out = poisoned(*be, {3, 5}, out_dt);
    const Tensor bias_dev = upload_as(*be, bias, dt);
    be->linear(out, be->empty({3, 0}, dt), be->empty({5, 0}, dt), &bias_dev);
    const Tensor got = download_f32(*be, out);
    for (int64_t t = 0; t < 3; ++t)
      for (int64_t j = 0; j < 5; ++j)
        EXPECT_EQ(got.data_as<float>()[t * 5 + j], bias.data_as<float>()[j]);
    be->linear(out, be->empty({3, 0}, dt), be->empty({5, 0}, dt), nullptr);
    const Tensor zeros = download_f32(*be, out);
    for (int64_t i = 0; i < 15; ++i) EXPECT_EQ(zeros.data_as<float>()[i], 0.0f);
  }
  // T == 0 does nothing (and does not fail).
  Tensor none = be->empty({0, 8}, dt);
  be->linear(none, be->empty({0, 16}, dt), be->empty({8, 16}, dt), nullptr);
  be->synchronize();
}

TEST(CudaLinear, RejectsBadArguments) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  auto be = make_backend(DType::kBF16);
  const DType dt = DType::kBF16;
  Tensor out = be->empty({4, 8}, dt);
  const Tensor x = be->empty({4, 16}, dt);
  const Tensor w = be->empty({8, 16}, dt);
  Tensor wrong_out = be->empty({4, 9}, dt);
  EXPECT_THROW(be->linear(wrong_out, x, w, nullptr), Error);
  EXPECT_THROW(be->linear(out, x, be->empty({8, 15}, dt), nullptr), Error);
  EXPECT_THROW(be->linear(out, x, be->empty({8, 16}, DType::kF16), nullptr), Error);
  const Tensor bad_bias = be->empty({9}, dt);
  EXPECT_THROW(be->linear(out, x, w, &bad_bias), Error);
  Tensor i32_out = be->empty({4, 8}, DType::kI32);
  EXPECT_THROW(be->linear(i32_out, x, w, nullptr), Error);
  Tensor square = be->empty({4, 4}, dt);
  EXPECT_THROW(be->linear(square, square, be->empty({4, 4}, dt), nullptr), Error);  // aliasing
}

TEST(CudaLinear, BatchInvariantRowsAreBitwiseEqualForEveryT) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  std::mt19937 rng(303);
  const int64_t pool_rows = 255;
  for (DType dt : {DType::kBF16, DType::kF16}) {
    auto be = make_backend(dt);
    auto* cb = dynamic_cast<CudaBackend*>(be.get());
    for (const LinearCase& c : {LinearCase{4096, 4096}, LinearCase{1000, 512}, LinearCase{100, 37},
                                LinearCase{11008, 512}}) {
      for (int combo = 0; combo < 4; ++combo) {
        const bool with_bias = combo & 1;
        const DType out_dt = (combo & 2) ? DType::kF32 : dt;
        const Tensor pool = random_rounded({pool_rows, c.k}, dt, rng);
        const Tensor w = be->load_weight(random_rounded({c.n, c.k}, dt, rng));
        const Tensor bias = upload_as(*be, random_rounded({c.n}, dt, rng), dt);
        const Tensor* b = with_bias ? &bias : nullptr;
        const size_t plans_before = cb->num_linear_plans();

        // Reference: the whole pool in one call.
        Tensor ref_dev = poisoned(*be, {pool_rows, c.n}, out_dt);
        be->linear(ref_dev, upload_as(*be, pool, dt), w, b);
        const Tensor ref = download(*be, ref_dev);
        const size_t row_bytes = static_cast<size_t>(c.n) * dtype_size(out_dt);

        for (int64_t tokens : {1, 7, 64, 255}) {
          // A random selection of pool rows in random order.
          std::vector<int64_t> rows(static_cast<size_t>(tokens));
          std::uniform_int_distribution<int64_t> pick(0, pool_rows - 1);
          for (auto& r : rows) r = pick(rng);
          Tensor out = poisoned(*be, {tokens, c.n}, out_dt);
          be->linear(out, upload_as(*be, pick_rows(pool, rows), dt), w, b);
          const Tensor got = download(*be, out);
          for (int64_t i = 0; i < tokens; ++i) {
            ASSERT_EQ(
                std::memcmp(static_cast<const char*>(got.data()) + i * row_bytes,
                            static_cast<const char*>(ref.data()) + rows[i] * row_bytes, row_bytes),
                0)
                << short_name(dt) << " N " << c.n << " K " << c.k << " combo " << combo << ": row "
                << i << " of T=" << tokens << " (pool row " << rows[i] << ")";
          }
        }

        // Tensors at odd addresses (one element past an allocation's start) are staged through
        // aligned copies, so they cannot pick another algorithm: same bits again.
        const int64_t tokens = 9;
        Tensor x_buf = be->empty({tokens * c.k + 8}, dt);
        Tensor x_odd = Tensor::wrap(static_cast<char*>(x_buf.data()) + dtype_size(dt),
                                    {tokens, c.k}, dt, Device::kCUDA);
        be->copy(x_odd, to_host_dtype(pool.narrow_rows(0, tokens), dt));
        Tensor out_buf = be->empty({tokens * c.n + 8}, out_dt);
        Tensor out_odd = Tensor::wrap(static_cast<char*>(out_buf.data()) + dtype_size(out_dt),
                                      {tokens, c.n}, out_dt, Device::kCUDA);
        be->linear(out_odd, x_odd, w, b);
        const Tensor got = download(*be, out_odd);
        EXPECT_EQ(std::memcmp(got.data(), ref.data(), row_bytes * tokens), 0)
            << short_name(dt) << " N " << c.n << " K " << c.k << " combo " << combo;

        // One cuBLASLt configuration served every T for this weight (float32 output with a bias
        // adds the bias in a separate kernel, so it shares the plan of combo 2).
        EXPECT_EQ(cb->num_linear_plans(), plans_before + (combo == 3 ? 0 : 1));
      }
    }
  }
}

// Rows told apart by kind (RowKinds) take a cuBLASLt plan per role when the decode GEMM is off:
// prompt rows the prompt plan, generated rows the generated-row plan. Each row's bits then depend
// only on the row and its kind: the same as in a batch of that kind alone, at every T, whatever
// the other rows' kinds.
TEST(CudaLinear, RolePlansKeepEveryRowBatchInvariant) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  std::mt19937 rng(304);
  const int64_t pool_rows = 200;
  for (DType dt : {DType::kBF16, DType::kF16}) {
    auto be = make_backend(dt);
    auto* cb = dynamic_cast<CudaBackend*>(be.get());
    cb->set_decode_gemm(false);
    for (const LinearCase& c : {LinearCase{4096, 4096}, LinearCase{1000, 512}}) {
      const Tensor pool = random_rounded({pool_rows, c.k}, dt, rng);
      const Tensor w = be->load_weight(random_rounded({c.n, c.k}, dt, rng));
      const size_t row_bytes = static_cast<size_t>(c.n) * dtype_size(dt);
      const size_t plans_before = cb->num_linear_plans();
      // References: the whole pool as prompt rows, and as generated rows.
      const RowKinds all_prompt, all_generated = RowKinds::all_generated(pool_rows);
      Tensor ref_p = poisoned(*be, {pool_rows, c.n}, dt), ref_g = poisoned(*be, {pool_rows, c.n}, dt);
      be->linear(ref_p, upload_as(*be, pool, dt), w, nullptr, &all_prompt);
      be->linear(ref_g, upload_as(*be, pool, dt), w, nullptr, &all_generated);
      const Tensor want_p = download(*be, ref_p), want_g = download(*be, ref_g);
      EXPECT_EQ(cb->num_linear_plans(), plans_before + 2) << "one plan per role";

      for (int64_t tokens : {1, 7, 64, 200}) {
        std::vector<int64_t> rows(static_cast<size_t>(tokens));
        std::uniform_int_distribution<int64_t> pick(0, pool_rows - 1);
        for (auto& r : rows) r = pick(rng);
        // Each row a prompt or a generated row at random.
        std::vector<bool> flags(static_cast<size_t>(tokens));
        std::bernoulli_distribution coin(0.5);
        for (size_t i = 0; i < flags.size(); ++i) flags[i] = coin(rng);
        const RowKinds kinds = RowKinds::from_flags(flags);
        Tensor out = poisoned(*be, {tokens, c.n}, dt);
        be->linear(out, upload_as(*be, pick_rows(pool, rows), dt), w, nullptr, &kinds);
        const Tensor got = download(*be, out);
        for (int64_t i = 0; i < tokens; ++i) {
          const Tensor& want = flags[static_cast<size_t>(i)] ? want_g : want_p;
          ASSERT_EQ(std::memcmp(static_cast<const char*>(got.data()) + i * row_bytes,
                                static_cast<const char*>(want.data()) + rows[i] * row_bytes, row_bytes),
                    0)
              << short_name(dt) << " N " << c.n << " K " << c.k << ": row " << i << " of T=" << tokens
              << (flags[static_cast<size_t>(i)] ? " (generated)" : " (prompt)");
        }
      }
      EXPECT_EQ(cb->num_linear_plans(), plans_before + 2);
    }
  }
}

}  // namespace
}  // namespace llmcore
