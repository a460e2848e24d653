// The decode GEMM (kernels/linear/skinny_gemm.cu): against the CPU backend's fp32 linear on the
// same, exactly representable inputs (bf16 and fp16, bias or not, 16-bit or float32 output, N and
// K that are and are not multiples of the tiles), and batch invariance: a token row's output bits
// are the same at every M, in every position of the batch, and under every tiling the kernel has.
// The gated form (SwiGLU fused into the epilogue) against skinny_gemm followed by silu_and_mul, bit
// for bit, and CudaBackend's linear / linear_silu_and_mul with row kinds.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/kernels.h"

namespace llmcore {
namespace {

using namespace cuda_testing;

struct Case {
  int64_t n, k;
};

CudaBackend& cuda_of(Backend& be) { return dynamic_cast<CudaBackend&>(be); }

TEST(CudaSkinnyGemm, MatchesCpu) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  constexpr double kAccum = 5e-5;  // fp32 accumulation allowance, times |x_t| |w_n|
  auto cpu = create_cpu_backend(0);
  std::mt19937 rng(811);
  for (DType dt : {DType::kBF16, DType::kF16}) {
    auto be = make_backend(dt);
    for (const Case& c : {Case{64, 64}, Case{100, 40}, Case{37, 8}, Case{1000, 520}, Case{33, 136},
                          Case{4096, 4096}, Case{16, 1032}}) {
      const bool big = c.n * c.k > (1 << 20);  // a model-sized weight: fewer combinations
      for (int64_t m : {1, 3, 8, 9, 17, 64, 65, 130}) {
        if (big && m != 1 && m != 65) continue;
        for (int combo = 0; combo < 4; ++combo) {
          if (big && combo != 0 && combo != 3) continue;
          const bool with_bias = combo & 1;
          const DType out_dt = (combo & 2) ? DType::kF32 : dt;
          const Tensor x = random_rounded({m, c.k}, dt, rng);
          const Tensor w = random_rounded({c.n, c.k}, dt, rng);
          const Tensor bias = random_rounded({c.n}, dt, rng);
          Tensor want = Tensor::empty({m, c.n}, DType::kF32);
          cpu->linear(want, x, w, with_bias ? &bias : nullptr);

          Tensor out = poisoned(*be, {m, c.n}, out_dt);
          const Tensor bias_dev = upload_as(*be, bias, dt);
          const Tensor x_dev = upload_as(*be, x, dt), w_dev = be->load_weight(w);
          ASSERT_TRUE(kernels::skinny_gemm_supports(w_dev));
          kernels::skinny_gemm(out, x_dev, w_dev, with_bias ? &bias_dev : nullptr, cuda_of(*be).stream());

          const std::vector<double> xn = row_norms(x), wn = row_norms(w);
          std::vector<double> atol(static_cast<size_t>(m * c.n));
          for (int64_t t = 0; t < m; ++t)
            for (int64_t j = 0; j < c.n; ++j) atol[static_cast<size_t>(t * c.n + j)] = kAccum * xn[t] * wn[j] + 1e-6;
          const double rtol = out_dt == DType::kF32 ? 1e-6 : rounding_rtol(dt, 1);
          ASSERT_TRUE(all_close(download_f32(*be, out), want, rtol, atol))
              << short_name(dt) << " N " << c.n << " K " << c.k << " M " << m << (with_bias ? " bias" : "")
              << (out_dt == DType::kF32 ? " f32 out" : "");
        }
      }
    }
  }
}

TEST(CudaSkinnyGemm, RowBitsDoNotDependOnMPositionOrTiling) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  std::mt19937 rng(812);
  const int64_t pool_rows = 200;
  for (DType dt : {DType::kBF16, DType::kF16}) {
    auto be = make_backend(dt);
    cudaStream_t stream = cuda_of(*be).stream();
    for (const Case& c : {Case{300, 1032}, Case{4096, 512}, Case{24, 8}}) {
      for (const bool f32_out : {false, true}) {
        const DType out_dt = f32_out ? DType::kF32 : dt;
        const Tensor pool = random_rounded({pool_rows, c.k}, dt, rng);
        const Tensor w = be->load_weight(random_rounded({c.n, c.k}, dt, rng));
        const Tensor bias = upload_as(*be, random_rounded({c.n}, dt, rng), dt);
        const size_t row_bytes = static_cast<size_t>(c.n) * dtype_size(out_dt);

        // Reference: each pool row alone (M = 1).
        std::vector<Tensor> alone;
        for (int64_t r = 0; r < pool_rows; ++r) {
          Tensor out = poisoned(*be, {1, c.n}, out_dt);
          kernels::skinny_gemm(out, upload_as(*be, pool.narrow_rows(r, 1), dt), w, &bias, stream);
          alone.push_back(download(*be, out));
        }
        // Random selections of rows (repeats allowed, any order) at several M, every tiling.
        for (int64_t m : {2, 8, 13, 64, 130, 200}) {
          std::vector<int64_t> rows(static_cast<size_t>(m));
          std::uniform_int_distribution<int64_t> pick(0, pool_rows - 1);
          for (auto& r : rows) r = pick(rng);
          const Tensor x = upload_as(*be, pick_rows(pool, rows), dt);
          for (const kernels::SkinnyGemmTiling& tiling : kernels::skinny_gemm_tilings()) {
            Tensor out = poisoned(*be, {m, c.n}, out_dt);
            kernels::skinny_gemm(out, x, w, &bias, stream, tiling);
            const Tensor got = download(*be, out);
            for (int64_t i = 0; i < m; ++i) {
              ASSERT_EQ(std::memcmp(static_cast<const char*>(got.data()) + i * row_bytes,
                                    alone[static_cast<size_t>(rows[i])].data(), row_bytes),
                        0)
                  << short_name(dt) << " N " << c.n << " K " << c.k << (f32_out ? " f32" : "") << ": row " << i
                  << " of M=" << m << " (pool row " << rows[i] << "), tiling " << tiling.col_tiles << "x"
                  << tiling.row_tiles;
            }
          }
        }
      }
    }
  }
}

TEST(CudaSkinnyGemm, RefusesWhatItCannotRun) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  auto be = make_backend(DType::kBF16);
  cudaStream_t stream = cuda_of(*be).stream();
  const Tensor w = be->empty({8, 12}, DType::kBF16);  // K % 8 != 0
  const Tensor x = be->empty({2, 12}, DType::kBF16);
  EXPECT_FALSE(kernels::skinny_gemm_supports(w));
  Tensor out = be->empty({2, 8}, DType::kBF16);
  EXPECT_THROW(kernels::skinny_gemm(out, x, w, nullptr, stream), Error);
  const Tensor w16 = be->empty({8, 16}, DType::kBF16), x16 = be->empty({2, 16}, DType::kBF16);
  EXPECT_TRUE(kernels::skinny_gemm_supports(w16));
  EXPECT_FALSE(kernels::skinny_gemm_supports(Tensor::empty({8, 16}, DType::kBF16)));  // on the host
  Tensor wrong = be->empty({2, 9}, DType::kBF16);
  EXPECT_THROW(kernels::skinny_gemm(wrong, x16, w16, nullptr, stream), Error);
  Tensor i32 = be->empty({2, 8}, DType::kI32);
  EXPECT_THROW(kernels::skinny_gemm(i32, x16, w16, nullptr, stream), Error);
  // An x view one element past its allocation's start is not 16-byte aligned.
  Tensor buf = be->empty({2 * 16 + 8}, DType::kBF16);
  const Tensor x_odd = Tensor::wrap(static_cast<char*>(buf.data()) + 2, {2, 16}, DType::kBF16, Device::kCUDA);
  EXPECT_THROW(kernels::skinny_gemm(out, x_odd, w16, nullptr, stream), Error);
}

// CudaBackend::linear with RowKinds: generated rows carry the decode GEMM's bits, the prompt rows
// between them (cuBLASLt's prompt plan on row slices, some starting at odd rows) the bits that
// plan gives the whole batch as prompt rows.
TEST(CudaSkinnyGemm, BackendLinearSendsEachRowKindToItsKernel) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  std::mt19937 rng(813);
  for (DType dt : {DType::kBF16, DType::kF16}) {
    auto be = make_backend(dt);
    cudaStream_t stream = cuda_of(*be).stream();
    const int64_t m = 20, n = 300, k = 520;
    const Tensor x = upload_as(*be, random_rounded({m, k}, dt, rng), dt);
    const Tensor w = be->load_weight(random_rounded({n, k}, dt, rng));
    const Tensor bias = upload_as(*be, random_rounded({n}, dt, rng), dt);
    RowKinds kinds;
    kinds.generated = {{0, 3}, {7, 8}, {15, 20}};
    for (const DType out_dt : {dt, DType::kF32}) {
      Tensor got = poisoned(*be, {m, n}, out_dt), prompt = poisoned(*be, {m, n}, out_dt),
             generated = poisoned(*be, {m, n}, out_dt);
      be->linear(got, x, w, &bias, &kinds);
      const RowKinds none;
      be->linear(prompt, x, w, &bias, &none);  // every row a prompt row: cuBLASLt's prompt plan
      kernels::skinny_gemm(generated, x, w, &bias, stream);
      const Tensor g = download(*be, got), p = download(*be, prompt), d = download(*be, generated);
      const size_t row_bytes = static_cast<size_t>(n) * dtype_size(out_dt);
      for (int64_t r = 0; r < m; ++r) {
        bool is_generated = false;
        for (const auto& [b, e] : kinds.generated) is_generated = is_generated || (r >= b && r < e);
        const Tensor& want = is_generated ? d : p;
        EXPECT_EQ(std::memcmp(static_cast<const char*>(g.data()) + r * row_bytes,
                              static_cast<const char*>(want.data()) + r * row_bytes, row_bytes),
                  0)
            << short_name(dt) << (out_dt == DType::kF32 ? " f32" : "") << " row " << r
            << (is_generated ? " (generated)" : " (prompt)");
      }
    }
    RowKinds unsorted;
    unsorted.generated = {{5, 8}, {2, 4}};
    Tensor out = be->empty({m, n}, dt);
    EXPECT_THROW(be->linear(out, x, w, nullptr, &unsorted), Error);
    RowKinds outside;
    outside.generated = {{18, 21}};
    EXPECT_THROW(be->linear(out, x, w, nullptr, &outside), Error);
  }
}

// skinny_gemm_silu_and_mul is skinny_gemm into gate_up then silu_and_mul, bit for bit: any M,
// every n-tiling, with and without bias, I a multiple of the 16-row tile or not.
TEST(CudaSkinnyGemm, GatedIsGemmThenSiluAndMul) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  std::mt19937 rng(814);
  for (DType dt : {DType::kBF16, DType::kF16}) {
    auto be = make_backend(dt);
    cudaStream_t stream = cuda_of(*be).stream();
    for (const Case& c : {Case{80, 64}, Case{600, 520}, Case{16, 8}, Case{4096, 2048}}) {  // n = 2I
      const int64_t inter = c.n / 2;
      const Tensor w = be->load_weight(random_rounded({c.n, c.k}, dt, rng, -0.5f, 0.5f));
      const Tensor bias = upload_as(*be, random_rounded({c.n}, dt, rng), dt);
      for (int64_t m : {1, 3, 8, 9, 17, 40}) {
        const Tensor x = upload_as(*be, random_rounded({m, c.k}, dt, rng), dt);
        for (const bool with_bias : {false, true}) {
          const Tensor* b = with_bias ? &bias : nullptr;
          Tensor gate_up = poisoned(*be, {m, c.n}, dt), want = poisoned(*be, {m, inter}, dt);
          kernels::skinny_gemm(gate_up, x, w, b, stream);
          kernels::silu_and_mul(want, gate_up, stream);
          const Tensor want_host = download(*be, want);
          for (const int cols : {0, 1, 2, 4}) {
            Tensor got = poisoned(*be, {m, inter}, dt);
            kernels::skinny_gemm_silu_and_mul(got, x, w, b, stream, kernels::SkinnyGemmTiling{cols, 1});
            EXPECT_TRUE(same_bits(download(*be, got), want_host))
                << short_name(dt) << " I " << inter << " K " << c.k << " M " << m << (with_bias ? " bias" : "")
                << " n-tiles " << cols;
          }
        }
      }
    }
    Tensor odd_w = be->empty({15, 16}, dt), x = be->empty({2, 16}, dt), out = be->empty({2, 7}, dt);
    EXPECT_THROW(kernels::skinny_gemm_silu_and_mul(out, x, odd_w, nullptr, stream), Error);  // 2I rows
    Tensor w = be->empty({16, 16}, dt), wrong = be->empty({2, 16}, dt);
    EXPECT_THROW(kernels::skinny_gemm_silu_and_mul(wrong, x, w, nullptr, stream), Error);  // out [M, I]
  }
}

// CudaBackend::linear_silu_and_mul is linear() then silu_and_mul() on every row, whatever the row
// kinds (generated rows: the fused decode GEMM; prompt rows: cuBLASLt then the SiLU kernel).
TEST(CudaSkinnyGemm, BackendLinearSiluAndMulIsLinearThenSiluAndMul) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  std::mt19937 rng(815);
  for (DType dt : {DType::kBF16, DType::kF16}) {
    auto be = make_backend(dt);
    const int64_t m = 20, inter = 150, k = 520;
    const Tensor x = upload_as(*be, random_rounded({m, k}, dt, rng), dt);
    const Tensor w = be->load_weight(random_rounded({2 * inter, k}, dt, rng, -0.5f, 0.5f));
    const Tensor bias = upload_as(*be, random_rounded({2 * inter}, dt, rng), dt);
    RowKinds mixed, none, all = RowKinds::all_generated(m);
    mixed.generated = {{0, 3}, {7, 8}, {15, 20}};
    for (const RowKinds* kinds : std::vector<const RowKinds*>{&mixed, &none, &all, nullptr}) {
      Tensor gate_up = poisoned(*be, {m, 2 * inter}, dt), want = poisoned(*be, {m, inter}, dt);
      be->linear(gate_up, x, w, &bias, kinds);
      be->silu_and_mul(want, gate_up);
      Tensor scratch = poisoned(*be, {m, 2 * inter}, dt), got = poisoned(*be, {m, inter}, dt);
      be->linear_silu_and_mul(got, scratch, x, w, &bias, kinds);
      EXPECT_TRUE(same_bits(download(*be, got), download(*be, want)))
          << short_name(dt) << " kinds " << (kinds == nullptr ? "null" : kinds == &mixed ? "mixed" : kinds == &all ? "all generated" : "none");
    }
  }
}

}  // namespace
}  // namespace llmcore
