// Probe (sm_90a only, not part of the build): does Hopper's warpgroup MMA (wgmma.mma_async,
// A from registers, B from shared memory) give the same fp32 bits as the warp MMA the attention
// kernels use (mma.sync m16n8k16), for the same operands and the same chain of k-steps?
//
// Why it matters: paged attention promises that a row's bits do not depend on the batch or on
// how its prompt was chunked (kernels/attention/attention.h). A prefill kernel on wgmma could keep
// that promise beside the mma.sync decode kernels only if the two instructions round alike.
//
// Each CTA (one warpgroup, 128 threads) takes its own A [64 x K], B [8 x K] (K contiguous per
// column: mma's "col" B) and a starting accumulator C [64 x 8], and computes D = C + A B^T over
// K / 16 chained k-steps twice: with wgmma m64n8k16 and, per warp, with mma.sync m16n8k16 on the
// same register fragments. The host counts the elements whose bits differ, and checks both
// against a double-precision product (a layout mistake shows as a large error, rounding as a tiny
// one). Operand sets: normal values, values spread over 2^-20 .. 2^20, and sums that cancel.
//
// Part two runs the attention kernels' own tile code (kernels/attention/paged_attention_tile.cuh)
// on one 64-row, 64-key, head-dim-128 tile: attend_tile (mma.sync, per warp) against
// attend_tile_wgmma (the warpgroup path: Q, K and V through 128-byte swizzle descriptors), all
// keys visible and causal, and counts the state elements (o, m, l) whose bits differ.
//
//   nvcc -O3 -std=c++17 -arch=sm_90a -I. -Icsrc benchmarks/kernels/probe_wgmma_bits.cu csrc/core/dtype.cpp \
//     -o /tmp/probe_wgmma_bits
//   /tmp/probe_wgmma_bits > benchmarks/results/probe_wgmma_bits-<device>-<date>.json
// (from the repository root). Prints one JSON object; the summary lines go to stderr.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "kernels/attention/paged_attention_tile.cuh"
#include "kernels/common/mma.cuh"

namespace {

constexpr int kM = 64, kN = 8, kK = 128, kSteps = kK / 16;

#define CHECK(x)                                                                     \
  do {                                                                               \
    cudaError_t e = (x);                                                             \
    if (e != cudaSuccess) {                                                          \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e)); \
      std::exit(1);                                                                  \
    }                                                                                \
  } while (0)

// Device arrays of n elements, and device copies of host vectors (freed by the callers).
template <typename U>
U* device_array(size_t n) {
  U* d = nullptr;
  CHECK(cudaMalloc(&d, n * sizeof(U)));
  return d;
}
template <typename U>
U* to_device(const std::vector<U>& h) {
  U* d = device_array<U>(h.size());
  CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(U), cudaMemcpyHostToDevice));
  return d;
}

// Per 16-bit type: its name, the warpgroup MMA (m64n8k16, A from registers, B by descriptor) and
// the host conversions (core/dtype.h). The warp MMA is the kernels' own (kernels/common/mma.cuh).
template <typename T>
struct Ops;

#define LLMCORE_PROBE_OPS(T, NAME, PTX_TYPE, TO_BITS, FROM_BITS)                                  \
  template <>                                                                                    \
  struct Ops<T> {                                                                                \
    static constexpr const char* kName = NAME;                                                   \
    __device__ static void wgmma(float (&d)[4], const uint32_t (&a)[4], uint64_t desc_b) {       \
      asm volatile(                                                                              \
          "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"                                              \
          "wgmma.mma_async.sync.aligned.m64n8k16.f32." PTX_TYPE "." PTX_TYPE                      \
          " {%0,%1,%2,%3}, {%4,%5,%6,%7}, %8, p, 1, 1, 0;\n}\n"                                   \
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                       \
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));                            \
    }                                                                                            \
    static uint16_t bits(float x) { return llmcore::TO_BITS(x); }                                \
    static float value(uint16_t u) { return llmcore::FROM_BITS(u); }                             \
  };
LLMCORE_PROBE_OPS(__nv_bfloat16, "bf16", "bf16", float_to_bf16, bf16_to_float)
LLMCORE_PROBE_OPS(__half, "fp16", "f16", float_to_fp16, fp16_to_float)
#undef LLMCORE_PROBE_OPS

// Shared-memory descriptor, no swizzle: start address, LBO (next core matrix along K) and SBO
// (next core matrix along N), each in 16-byte units.
__device__ uint64_t make_desc(const void* smem, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  return static_cast<uint64_t>((addr >> 4) & 0x3fff) |
         (static_cast<uint64_t>((lbo_bytes >> 4) & 0x3fff) << 16) |
         (static_cast<uint64_t>((sbo_bytes >> 4) & 0x3fff) << 32);
}

__device__ uint32_t pair(const uint16_t* p) {  // two consecutive 16-bit elements
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 16);
}

// a: [CTAs][kM][kK], b: [CTAs][kN][kK] (16-bit bits), c: [CTAs][kM][kN] fp32;
// out_wg, out_mma: [CTAs][kM][kN].
template <typename T>
__global__ void __launch_bounds__(128) Probe(const uint16_t* a, const uint16_t* b, const float* c,
                                             float* out_wg, float* out_mma) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  // B of k-step s as two 8x8 core matrices (k 0-7, k 8-15 of the step), each 8 rows (n) of 16
  // bytes: [s][half][n][8].
  __shared__ __align__(128) uint16_t b_s[kSteps][2][kN][8];
  const int cta = blockIdx.x, tid = threadIdx.x;
  const uint16_t* A = a + static_cast<size_t>(cta) * kM * kK;
  const uint16_t* B = b + static_cast<size_t>(cta) * kN * kK;
  const float* C = c + static_cast<size_t>(cta) * kM * kN;
  for (int i = tid; i < kSteps * 2 * kN * 8; i += 128) {
    const int j = i % 8, n = (i / 8) % kN, half = (i / (8 * kN)) % 2, s = i / (16 * kN);
    b_s[s][half][n][j] = B[n * kK + s * 16 + half * 8 + j];
  }
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncthreads();

  const int warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int r0 = warp * 16 + g, r1 = r0 + 8;
  float d_wg[4] = {C[r0 * kN + 2 * q], C[r0 * kN + 2 * q + 1], C[r1 * kN + 2 * q], C[r1 * kN + 2 * q + 1]};
  float d_mma[4] = {d_wg[0], d_wg[1], d_wg[2], d_wg[3]};
  for (int s = 0; s < kSteps; ++s) {
    const int k0 = s * 16 + 2 * q;
    const uint32_t frag[4] = {pair(A + r0 * kK + k0), pair(A + r1 * kK + k0), pair(A + r0 * kK + k0 + 8),
                              pair(A + r1 * kK + k0 + 8)};
    const uint32_t b0 = pair(B + g * kK + k0), b1 = pair(B + g * kK + k0 + 8);
    llmcore::kernels::mma_m16n8k16<T>(d_mma, frag[0], frag[1], frag[2], frag[3], b0, b1);
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
    Ops<T>::wgmma(d_wg, frag, make_desc(&b_s[s][0][0][0], kN * 16, 2 * kN * 16));
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  }
  float* W = out_wg + static_cast<size_t>(cta) * kM * kN;
  float* S = out_mma + static_cast<size_t>(cta) * kM * kN;
  W[r0 * kN + 2 * q] = d_wg[0];
  W[r0 * kN + 2 * q + 1] = d_wg[1];
  W[r1 * kN + 2 * q] = d_wg[2];
  W[r1 * kN + 2 * q + 1] = d_wg[3];
  S[r0 * kN + 2 * q] = d_mma[0];
  S[r0 * kN + 2 * q + 1] = d_mma[1];
  S[r1 * kN + 2 * q] = d_mma[2];
  S[r1 * kN + 2 * q + 1] = d_mma[3];
#endif
}

struct Result {
  std::string dtype, operands;
  long elements = 0, bit_mismatches = 0;
  double max_rel_wg = 0, max_rel_mma = 0, max_rel_between = 0;
};

template <typename T>
Result run(const char* operands, int kind, int ctas, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> expo(-20, 20);
  auto draw = [&](int i) -> float {
    float x = normal(rng);
    if (kind == 1) x = std::ldexp(x, expo(rng));
    if (kind == 2 && i % 2 == 1) x = -x;  // paired below so that sums nearly cancel
    return x;
  };
  const size_t na = static_cast<size_t>(ctas) * kM * kK, nb = static_cast<size_t>(ctas) * kN * kK,
               nc = static_cast<size_t>(ctas) * kM * kN;
  std::vector<uint16_t> a(na), b(nb);
  std::vector<float> c(nc);
  for (size_t i = 0; i < na; ++i) a[i] = Ops<T>::bits(draw(static_cast<int>(i)));
  for (size_t i = 0; i < nb; ++i) b[i] = Ops<T>::bits(kind == 2 ? std::fabs(draw(0)) : draw(0));
  if (kind == 2)  // a[2j+1] = -a[2j], b[2j+1] ~ b[2j]: products cancel pairwise up to rounding
    for (size_t i = 0; i + 1 < na; i += 2) a[i + 1] = a[i] ^ 0x8000;
  for (size_t i = 0; i < nc; ++i) c[i] = kind == 1 ? std::ldexp(normal(rng), expo(rng)) : normal(rng);

  uint16_t *da = to_device(a), *db = to_device(b);
  float *dc = to_device(c), *dw = device_array<float>(nc), *dm = device_array<float>(nc);
  Probe<T><<<ctas, 128>>>(da, db, dc, dw, dm);
  CHECK(cudaGetLastError());
  CHECK(cudaDeviceSynchronize());
  std::vector<float> w(nc), m(nc);
  CHECK(cudaMemcpy(w.data(), dw, nc * 4, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(m.data(), dm, nc * 4, cudaMemcpyDeviceToHost));
  for (void* p : {static_cast<void*>(da), static_cast<void*>(db), static_cast<void*>(dc),
                  static_cast<void*>(dw), static_cast<void*>(dm)})
    CHECK(cudaFree(p));

  Result r;
  r.dtype = Ops<T>::kName;
  r.operands = operands;
  for (int t = 0; t < ctas; ++t)
    for (int i = 0; i < kM; ++i)
      for (int j = 0; j < kN; ++j) {
        const size_t at = (static_cast<size_t>(t) * kM + i) * kN + j;
        double ref = c[at], mag = std::fabs(c[at]);
        for (int k = 0; k < kK; ++k) {
          const double p = static_cast<double>(Ops<T>::value(a[(static_cast<size_t>(t) * kM + i) * kK + k])) *
                           Ops<T>::value(b[(static_cast<size_t>(t) * kN + j) * kK + k]);
          ref += p;
          mag += std::fabs(p);
        }
        uint32_t uw, um;
        std::memcpy(&uw, &w[at], 4);
        std::memcpy(&um, &m[at], 4);
        ++r.elements;
        if (uw != um) ++r.bit_mismatches;
        const double scale = mag > 0 ? mag : 1.0;  // error relative to the sum of magnitudes
        r.max_rel_wg = std::max(r.max_rel_wg, std::fabs(w[at] - ref) / scale);
        r.max_rel_mma = std::max(r.max_rel_mma, std::fabs(m[at] - ref) / scale);
        r.max_rel_between = std::max(r.max_rel_between, std::fabs(static_cast<double>(w[at]) - m[at]) / scale);
      }
  return r;
}

// --- part two: the attention tile ---------------------------------------------------------------

namespace ad = llmcore::kernels::attention_detail;
constexpr int kD = 128, kKeys = 64;
using TShape = ad::TileShape<kD, true>;
static_assert(TShape::kBlockN == kKeys);

// q, k, v: [tiles][64][128] 16-bit bits, row-major. out: [tiles][variant 0..1][128 threads][state
// floats]: variant 0 mma.sync, 1 wgmma.
constexpr int kStateFloats = kD / 8 * 4 + 4;
template <typename T>
__global__ void __launch_bounds__(128) TileProbe(const uint16_t* q, const uint16_t* k, const uint16_t* v,
                                                 int causal, float* out) {
#if LLMCORE_ATTENTION_WGMMA
  __shared__ __align__(1024) T q_s[64 * kD];
  __shared__ __align__(1024) T k_s[kKeys * kD];
  __shared__ __align__(1024) T v_s[kKeys * kD];
  const size_t base = static_cast<size_t>(blockIdx.x) * 64 * kD;
  for (int i = threadIdx.x; i < 64 * TShape::kChunks; i += 128) {
    const int r = i / TShape::kChunks, c = i % TShape::kChunks, at = TShape::off(r, c);
    for (int e = 0; e < 8; ++e) {
      uint16_t bq = q[base + r * kD + c * 8 + e], bk = k[base + r * kD + c * 8 + e], bv = v[base + r * kD + c * 8 + e];
      std::memcpy(&q_s[at + e], &bq, 2);
      std::memcpy(&k_s[at + e], &bk, 2);
      std::memcpy(&v_s[at + e], &bv, 2);
    }
  }
  llmcore::kernels::fence_proxy_async();
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int lo[2], hi[2];
  for (int i = 0; i < 2; ++i) {
    const int row = warp * 16 + lane / 4 + 8 * i;
    lo[i] = 0;
    hi[i] = causal ? row : kKeys - 1;  // row r sees keys 0 .. r
  }
  const bool all_visible = !causal;
  for (int variant = 0; variant < 2; ++variant) {
    ad::PartitionState<kD> st;
    st.reset();
    const float scale = 0.08838834764831845f * 1.4426950408889634f;
    // Two tiles in a row: the second rescales the first's state.
    for (int rep = 0; rep < 2; ++rep) {
      if (variant == 0)
        ad::attend_tile<T, kD, true>(st, q_s + TShape::off(warp * 16, 0), k_s, v_s, 0, lo, hi, scale, lane, all_visible);
      else
        ad::attend_tile_wgmma<T, kD>(st, q_s, k_s, v_s, 0, lo, hi, scale, lane, all_visible);
    }
    float* o = out + ((static_cast<size_t>(blockIdx.x) * 2 + variant) * 128 + threadIdx.x) * kStateFloats;
    for (int dt = 0; dt < kD / 8; ++dt)
      for (int c = 0; c < 4; ++c) o[dt * 4 + c] = st.o[dt][c];
    o[kD / 2 + 0] = st.m[0];
    o[kD / 2 + 1] = st.m[1];
    o[kD / 2 + 2] = st.l[0];
    o[kD / 2 + 3] = st.l[1];
  }
#endif
}

struct TileResult {
  std::string dtype, mask;
  long elements = 0, mismatches = 0;
};

template <typename T>
TileResult run_tile(bool causal, int tiles, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const size_t n = static_cast<size_t>(tiles) * 64 * kD;
  std::vector<uint16_t> q(n), k(n), v(n);
  for (size_t i = 0; i < n; ++i) {
    q[i] = Ops<T>::bits(normal(rng) * 2.0f);
    k[i] = Ops<T>::bits(normal(rng) * 2.0f);
    v[i] = Ops<T>::bits(normal(rng));
  }
  const size_t nout = static_cast<size_t>(tiles) * 2 * 128 * kStateFloats;
  uint16_t *dq = to_device(q), *dk = to_device(k), *dv = to_device(v);
  float* dout = device_array<float>(nout);
  TileProbe<T><<<tiles, 128>>>(dq, dk, dv, causal ? 1 : 0, dout);
  CHECK(cudaGetLastError());
  CHECK(cudaDeviceSynchronize());
  std::vector<float> out(nout);
  CHECK(cudaMemcpy(out.data(), dout, nout * 4, cudaMemcpyDeviceToHost));
  for (void* p : {static_cast<void*>(dq), static_cast<void*>(dk), static_cast<void*>(dv), static_cast<void*>(dout)})
    CHECK(cudaFree(p));
  TileResult r;
  r.dtype = Ops<T>::kName;
  r.mask = causal ? "causal" : "all visible";
  const size_t per = static_cast<size_t>(128) * kStateFloats;
  for (int t = 0; t < tiles; ++t)
    for (size_t i = 0; i < per; ++i) {
      const float* base = out.data() + static_cast<size_t>(t) * 2 * per;
      ++r.elements;
      if (std::memcmp(&base[i], &base[per + i], 4) != 0) ++r.mismatches;
    }
  return r;
}

}  // namespace

int main() {
  cudaDeviceProp prop{};
  CHECK(cudaGetDeviceProperties(&prop, 0));
  if (prop.major != 9) {
    std::fprintf(stderr, "needs an sm_90 GPU, found sm_%d%d\n", prop.major, prop.minor);
    return 2;
  }
  const int ctas = 512;
  std::vector<Result> results;
  const char* kinds[] = {"normal", "exponents 2^-20..2^20", "cancelling pairs"};
  for (int kind = 0; kind < 3; ++kind) {
    results.push_back(run<__nv_bfloat16>(kinds[kind], kind, ctas, 1234u + kind));
    results.push_back(run<__half>(kinds[kind], kind, ctas, 5678u + kind));
  }
  long mismatches = 0, elements = 0;
  std::printf("{\"benchmark\": \"probe_wgmma_bits\", \"device\": \"%s\", \"shape\": \"m64n8, K=%d in k16 steps\", \"results\": [",
              prop.name, kK);
  for (size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    mismatches += r.bit_mismatches;
    elements += r.elements;
    std::printf("%s{\"dtype\": \"%s\", \"operands\": \"%s\", \"elements\": %ld, \"bit_mismatches\": %ld, "
                "\"max_rel_err_wgmma\": %.3g, \"max_rel_err_mma_sync\": %.3g, \"max_rel_diff_between\": %.3g}",
                i ? ", " : "", r.dtype.c_str(), r.operands.c_str(), r.elements, r.bit_mismatches, r.max_rel_wg,
                r.max_rel_mma, r.max_rel_between);
  }
  std::printf("], \"attention_tile\": [");
  std::vector<TileResult> tiles = {run_tile<__nv_bfloat16>(false, 64, 11), run_tile<__nv_bfloat16>(true, 64, 12),
                                   run_tile<__half>(false, 64, 13), run_tile<__half>(true, 64, 14)};
  for (size_t i = 0; i < tiles.size(); ++i) {
    const TileResult& r = tiles[i];
    std::printf("%s{\"dtype\": \"%s\", \"mask\": \"%s\", \"state_elements\": %ld, \"bit_mismatches\": %ld}",
                i ? ", " : "", r.dtype.c_str(), r.mask.c_str(), r.elements, r.mismatches);
    std::fprintf(stderr, "attention tile %s %s: %ld of %ld state elements differ in bits\n", r.dtype.c_str(),
                 r.mask.c_str(), r.mismatches, r.elements);
  }
  std::printf("]}\n");
  std::fprintf(stderr, "probe_wgmma_bits (%s): %ld of %ld elements differ in bits between wgmma and mma.sync\n",
               prop.name, mismatches, elements);
  return 0;
}
