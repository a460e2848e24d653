// The decode GEMM: out [M, N] = x [M, K] @ weight [N, K]^T (+ bias) for the rows of generated
// tokens when there are few (up to 16), where the time is the weight's read from memory.
//
// Why a kernel of our own: cuBLASLt's kernels for small M read the weight at 53-73% of the copy
// bandwidth on an H100 (down_proj at M = 1: 0.074 ms, this kernel 0.045), and the one algorithm
// per weight shape that batch invariance allows (backend/cuda/cuda_linear.cpp) must also serve
// prefill, where the kernels fastest at M = 1 are 2x too slow. So generated-token rows can go
// through this kernel and prompt rows through cuBLASLt; a row's kind never depends on the batch
// (backend.h, RowKinds). Past 16 tokens this kernel is bound by its mma issue rate and slower than
// cuBLASLt, so the engine uses it only when it never runs more than 16 sequences
// (engine/llm_engine.cpp, kDecodeGemmMaxSeqs).
//
// How: swapped operands. The weight is the mma's A (16 weight rows per warp tile), the tokens its
// B (8 columns per n-tile), so one mma.m16n8k16 covers 16 outputs of up to 8 tokens. Each lane
// loads 16 contiguous bytes of a weight row and 16 of a token row, and both operands use the same
// assignment of those 8 memory k's to the mma's logical k's (the dot product does not care which
// logical k holds which product, as long as A and B agree):
//   lane (g = lane / 4, t = lane % 4), elements k0 + 8t .. k0 + 8t + 7 of its rows:
//   elements 0,1 -> logical k 2t, 2t+1 and 2,3 -> 2t+8, 2t+9 of the first mma;
//   elements 4..7 the same in the second mma.
// A warp walks K in chunks of kChunk elements; the kKWarps warps of a row tile take the chunks
// round-robin (warp w: chunks w, w + kKWarps, ...), each accumulating its chunks in increasing k
// in the mma's fp32 accumulators, and warp 0 adds the others' sums in warp order. Weight loads of
// the next chunk are issued before the current chunk's mmas (register double buffering) and
// bypass L1 (each weight element is read once; the token rows, read by every row tile, stay there).
// The kernel is launched with programmatic dependent launch (common/pdl.cuh): its CTAs start and
// load their first weights while the kernel producing x (RMSNorm, SiLU-and-mul, attention)
// finishes, and once a CTA has read all its weights it lets the next kernel launch.
//
// Batch invariance: an output element is fixed by its weight row, its token row, kChunk and
// kKWarps (constants), and the mma, whose output column n depends only on B's column n. The number
// of n-tiles per CTA and of row tiles per CTA (the tiling, chosen from M for speed) only group
// independent work, so a token's bits are the same at any M, in any column, and with any tiling
// (tests/cpp/cuda/test_cuda_skinny_gemm.cpp checks all three).
//
// The gated variant (skinny_gemm_silu_and_mul) computes the MLP's gate_up rows and applies SwiGLU's
// gate in the epilogue: a CTA's two row tiles are the same 16 rows of the gate half and of the up
// half of the weight, and the result is silu(gate) * up with gate and up rounded to the activation
// dtype first, as silu_and_mul.cu reads them from the gate_up tensor (kernels/activation/silu.cuh
// is the shared arithmetic). Since a row's bits do not depend on the tiling, that is bit for bit
// skinny_gemm followed by silu_and_mul, one launch and no gate_up round trip fewer.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/activation/silu.cuh"
#include "kernels/common/dispatch.cuh"
#include "kernels/common/mma.cuh"
#include "kernels/common/pdl.cuh"
#include "kernels/common/tensor_checks.h"
#include "kernels/kernels.h"

namespace llmcore::kernels {

namespace {

// Warps splitting K within a row tile. 8 read every 8B shape faster than 4 at 1-8 tokens on an
// H100 (o_proj 0.0138 against 0.0145 ms, down 0.0427 against 0.0436, gate_up 0.0808 against
// 0.0828; qkv 0.0200 against 0.0197), more bytes in flight per CTA.
constexpr int kKWarps = 8;
constexpr int kSubSteps = 4;                // 32-element k steps per chunk
constexpr int kChunk = 32 * kSubSteps;      // K elements per warp chunk

// 16 bytes of the weight: read once, so not kept in L1.
__device__ __forceinline__ uint4 load_weight16(const void* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// 16 bytes of a token row: read by every row tile, so cached.
__device__ __forceinline__ uint4 load_token16(const void* p) {
  return __ldg(reinterpret_cast<const uint4*>(p));
}

template <typename T, typename OutT>
struct SkinnyParams {
  const T* x;     // [M, K]
  const T* w;     // [N, K]
  const T* bias;  // [N] or null
  OutT* out;      // [M, N]; gated: [M, inter]
  int m, n, k;
  int inter;      // gated: I, the weight being [2I, K] (gate rows, then up rows); else 0
};

// One 32-element k step of a warp: 16 weight rows (w_lo: row g, w_hi: row g + 8, 16 bytes each)
// times 8 tokens (xv: token g, 16 bytes), accumulated into acc.
template <typename T>
__device__ __forceinline__ void mma_k32(float (&acc)[4], const uint4& w_lo, const uint4& w_hi, const uint4& xv) {
  // A: {row g k 2t.., row g+8 k 2t.., row g k 2t+8.., row g+8 k 2t+8..}; B: {k 2t.., k 2t+8..}.
  mma_m16n8k16<T>(acc, w_lo.x, w_hi.x, w_lo.y, w_hi.y, xv.x, xv.y);
  mma_m16n8k16<T>(acc, w_lo.z, w_hi.z, w_lo.w, w_hi.w, xv.z, xv.w);
}

// The kernel's end: warp 0 of each row tile adds the other K warps' sums in warp order, adds the
// bias and stores (gated: the up tile's warp 0 hands its rounded values to the gate tile's, which
// stores silu(gate) * up). Row tile rt holds output rows tile_row .. tile_row + 15 (those below
// `rows`), weight rows w_base + those. partial: kRowTiles * (kKWarps - 1) * kColTiles * 4 * 32
// floats of shared memory, up_s (gated) kColTiles * 4 * 32.
template <typename T, typename OutT, int kColTiles, int kRowTiles, bool kGated>
__device__ __forceinline__ void reduce_and_store(const SkinnyParams<T, OutT>& p, float (&acc)[kColTiles][4],
                                                 float* partial, float* up_s, int rt, int kw, int lane,
                                                 int tile_row, int w_base, int rows, int col0) {
  auto slot = [&](int w, int j, int e) { return ((rt * (kKWarps - 1) + w) * kColTiles * 4 + j * 4 + e) * 32 + lane; };
  if (kw > 0) {
#pragma unroll
    for (int j = 0; j < kColTiles; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) partial[slot(kw - 1, j, e)] = acc[j][e];
  }
  __syncthreads();
  const int g = lane >> 2, t = lane & 3;
  // The row tile's sum for fragment element (j, e), bias added. mma output: e = 0, 1 -> row g,
  // columns 2t, 2t+1; e = 2, 3 -> row g+8.
  auto row_of = [&](int e) { return tile_row + g + (e < 2 ? 0 : 8); };
  auto col_of = [&](int j, int e) { return col0 + j * 8 + 2 * t + (e & 1); };
  auto total = [&](int j, int e) {
    float v = acc[j][e];
#pragma unroll
    for (int w = 0; w < kKWarps - 1; ++w) v = __fadd_rn(v, partial[slot(w, j, e)]);
    if (p.bias != nullptr && row_of(e) < rows) v = __fadd_rn(v, to_float(p.bias[w_base + row_of(e)]));
    return v;
  };
  if constexpr (kGated) {
    if (kw == 0 && rt == 1) {
#pragma unroll
      for (int j = 0; j < kColTiles; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) up_s[(j * 4 + e) * 32 + lane] = round_to<T>(total(j, e));
    }
    __syncthreads();
    if (rt != 0) return;
  }
  if (kw != 0) return;
#pragma unroll
  for (int j = 0; j < kColTiles; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int row = row_of(e), col = col_of(j, e);
      if (row >= rows || col >= p.m) continue;
      OutT* dst = p.out + static_cast<int64_t>(col) * rows + row;
      if constexpr (kGated) {
        *dst = silu_times<T>(round_to<T>(total(j, e)), up_s[(j * 4 + e) * 32 + lane]);
      } else {
        *dst = from_float<OutT>(total(j, e));
      }
    }
}

// grid (ceil(M / (8 kColTiles)), ceil(N / (16 kRowTiles))), gated (ceil(M / (8 kColTiles)),
// ceil(I / 16)) with kRowTiles 2 (gate, up); kRowTiles * kKWarps warps.
template <typename T, typename OutT, int kColTiles, int kRowTiles, bool kGated>
__global__ void __launch_bounds__(kRowTiles * kKWarps * 32)
    SkinnyGemmKernel(SkinnyParams<T, OutT> p) {
  static_assert(!kGated || (kRowTiles == 2 && std::is_same_v<T, OutT>), "gated: a gate and an up tile, 16-bit out");
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int kw = warp % kKWarps;  // which chunks of K
  const int rt = warp / kKWarps;  // which row tile of the CTA
  const int g = lane >> 2, t = lane & 3;
  // The tile's first output row, its weight rows' offset, and the output rows that exist.
  const int tile_row = kGated ? blockIdx.y * 16 : (blockIdx.y * kRowTiles + rt) * 16;
  const int w_base = kGated ? rt * p.inter : 0;
  const int rows = kGated ? p.inter : p.n;
  const int col0 = blockIdx.x * kColTiles * 8;

  const int r_lo = tile_row + g, r_hi = tile_row + g + 8;
  const bool ok_lo = r_lo < rows, ok_hi = r_hi < rows;
  const T* w_lo = p.w + static_cast<int64_t>(w_base + (ok_lo ? r_lo : 0)) * p.k + 8 * t;
  const T* w_hi = p.w + static_cast<int64_t>(w_base + (ok_hi ? r_hi : 0)) * p.k + 8 * t;
  const T* x_row[kColTiles];
  bool x_ok[kColTiles];
#pragma unroll
  for (int j = 0; j < kColTiles; ++j) {
    const int c = col0 + j * 8 + g;
    x_ok[j] = c < p.m;
    x_row[j] = p.x + static_cast<int64_t>(x_ok[j] ? c : 0) * p.k + 8 * t;
  }

  float acc[kColTiles][4];
#pragma unroll
  for (int j = 0; j < kColTiles; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;

  const uint4 zero = make_uint4(0, 0, 0, 0);
  const int num_chunks = (p.k + kChunk - 1) / kChunk;
  auto load_chunk = [&](int chunk, uint4 (&dst)[kSubSteps][2]) {
#pragma unroll
    for (int u = 0; u < kSubSteps; ++u) {
      const int k = chunk * kChunk + u * 32;
      const bool in = k + 8 * t < p.k;  // K % 8 == 0: a 16-byte piece is wholly in or out
      dst[u][0] = in && ok_lo ? load_weight16(w_lo + k) : zero;
      dst[u][1] = in && ok_hi ? load_weight16(w_hi + k) : zero;
    }
  };
  auto compute_chunk = [&](int chunk, const uint4 (&wr)[kSubSteps][2]) {
#pragma unroll
    for (int u = 0; u < kSubSteps; ++u) {
      const int k = chunk * kChunk + u * 32;
      const bool in = k + 8 * t < p.k;
#pragma unroll
      for (int j = 0; j < kColTiles; ++j)
        mma_k32<T>(acc[j], wr[u][0], wr[u][1], in && x_ok[j] ? load_token16(x_row[j] + k) : zero);
    }
  };

  // Two register buffers, alternating, so the next chunk's loads are in flight during the mmas.
  uint4 wa[kSubSteps][2], wb[kSubSteps][2];
  int chunk = kw;
  if (chunk < num_chunks) load_chunk(chunk, wa);
  // Launched with programmatic dependent launch: the first weights are on their way while the
  // kernel that writes x may still be finishing; x and out are touched only after this.
  pdl_wait();
  while (chunk < num_chunks) {
    const int next = chunk + kKWarps;
    if (next < num_chunks) load_chunk(next, wb);
    compute_chunk(chunk, wa);
    chunk = next;
    if (chunk >= num_chunks) break;
    const int after = chunk + kKWarps;
    if (after < num_chunks) load_chunk(after, wa);
    compute_chunk(chunk, wb);
    chunk = after;
  }

  // The weights are all read: the next kernel may launch and wait for this one's outputs, or
  // start on its own weights (common/pdl.cuh).
  pdl_launch_dependents();
  __shared__ float partial[kRowTiles * (kKWarps - 1) * kColTiles * 4 * 32];
  __shared__ float up_s[kGated ? kColTiles * 4 * 32 : 1];
  reduce_and_store<T, OutT, kColTiles, kRowTiles, kGated>(p, acc, partial, up_s, rt, kw, lane, tile_row, w_base,
                                                          rows, col0);
}

template <typename T, typename OutT, int kColTiles, int kRowTiles, bool kGated = false>
void launch(const SkinnyParams<T, OutT>& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(util::ceil_div(p.m, 8 * kColTiles)),
                  static_cast<unsigned>(kGated ? util::ceil_div(p.inter, 16) : util::ceil_div(p.n, 16 * kRowTiles)));
  launch_with_pdl(SkinnyGemmKernel<T, OutT, kColTiles, kRowTiles, kGated>, grid, dim3(kRowTiles * kKWarps * 32), 0,
                  stream, p);
}

template <typename T, typename OutT>
void dispatch(const SkinnyParams<T, OutT>& p, SkinnyGemmTiling tiling, cudaStream_t stream) {
  const int cols = tiling.col_tiles, rows = tiling.row_tiles;
  if (cols == 1 && rows == 1) return launch<T, OutT, 1, 1>(p, stream);
  if (cols == 2 && rows == 1) return launch<T, OutT, 2, 1>(p, stream);
  if (cols == 4 && rows == 1) return launch<T, OutT, 4, 1>(p, stream);
  if (cols == 2 && rows == 2) return launch<T, OutT, 2, 2>(p, stream);
  throw_runtime_error("skinny_gemm: no kernel for tiling ", cols, " n-tiles x ", rows, " row tiles");
}

template <typename T>
void dispatch_gated(const SkinnyParams<T, T>& p, int col_tiles, cudaStream_t stream) {
  // 4 n-tiles run as 2: with two row tiles per CTA, 4 would spill registers (bits are the same).
  if (col_tiles == 1) return launch<T, T, 1, 2, true>(p, stream);
  if (col_tiles == 2 || col_tiles == 4) return launch<T, T, 2, 2, true>(p, stream);
  throw_runtime_error("skinny_gemm_silu_and_mul: no kernel for ", col_tiles, " n-tiles");
}

// The checks both entry points make; returns M.
int64_t check_operands(const char* what, const Tensor& out, const Tensor& x, const Tensor& weight, const Tensor* bias) {
  util::check_cuda_matrix(x, "skinny_gemm x");
  util::check_cuda_matrix(weight, "skinny_gemm weight");
  const int64_t m = x.dim(0), n = weight.dim(0), k = weight.dim(1);
  LLMCORE_CHECK(x.dim(1) == k && x.dtype() == weight.dtype(), what, ": x ", dtype_name(x.dtype()), " ",
                shape_str(x.shape()), " does not match weight ", dtype_name(weight.dtype()), " ",
                shape_str(weight.shape()));
  LLMCORE_CHECK(skinny_gemm_supports(weight) && util::is_aligned(x.data(), 16), what, ": unsupported x ",
                shape_str(x.shape()), " / weight ", dtype_name(weight.dtype()), " ", shape_str(weight.shape()),
                " (needs bf16/fp16, K % 8 == 0 and 16-byte aligned x and weight)");
  if (bias != nullptr) util::check_cuda(*bias, "skinny_gemm bias", x.dtype(), {n});
  LLMCORE_CHECK(out.data() != x.data() || out.nbytes() == 0, what, ": out must not alias x");
  LLMCORE_CHECK(m <= (int64_t{1} << 30), what, ": ", m, " rows");
  return m;
}

}  // namespace

const std::vector<SkinnyGemmTiling>& skinny_gemm_tilings() {
  static const std::vector<SkinnyGemmTiling> all = {{1, 1}, {2, 1}, {4, 1}, {2, 2}};
  return all;
}

SkinnyGemmTiling skinny_gemm_default_tiling(int64_t m) {
  // Measured on an H100 (benchmarks/kernels.py): 1x1 is best up to 8 tokens, 2x1 near the best at
  // 16, 2x2 past that, where every tiling is bound by its mma issue rate and cuBLASLt is faster
  // (the engine then sends no row here but a recompute's, see RowKinds).
  if (m <= 8) return {1, 1};
  if (m <= 16) return {2, 1};
  return {2, 2};
}

bool skinny_gemm_supports(const Tensor& weight) {
  if (weight.ndim() != 2 || weight.device() != Device::kCUDA) return false;
  const int64_t n = weight.dim(0), k = weight.dim(1);
  return (weight.dtype() == DType::kBF16 || weight.dtype() == DType::kF16) && k > 0 && k % 8 == 0 &&
         k <= (int64_t{1} << 30) && util::ceil_div(n, 16) <= 65535 && util::is_aligned(weight.data(), 16);
}

void skinny_gemm(Tensor& out, const Tensor& x, const Tensor& weight, const Tensor* bias, cudaStream_t stream,
                 SkinnyGemmTiling tiling) {
  const int64_t m = check_operands("skinny_gemm", out, x, weight, bias), n = weight.dim(0), k = weight.dim(1);
  LLMCORE_CHECK(out.dtype() == x.dtype() || out.dtype() == DType::kF32, "skinny_gemm: out must be ",
                dtype_name(x.dtype()), " or float32, got ", dtype_name(out.dtype()));
  util::check_cuda(out, "skinny_gemm out", out.dtype(), {m, n});
  if (m == 0 || n == 0) return;
  if (tiling.col_tiles == 0) tiling = skinny_gemm_default_tiling(m);
  LLMCORE_DISPATCH_HALF(x.dtype(), T, {
    const T* b = bias != nullptr ? bias->data_as<T>() : nullptr;
    if (out.dtype() == DType::kF32) {
      dispatch(SkinnyParams<T, float>{x.data_as<T>(), weight.data_as<T>(), b, out.data_as<float>(),
                                      static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), 0},
               tiling, stream);
    } else {
      dispatch(SkinnyParams<T, T>{x.data_as<T>(), weight.data_as<T>(), b, out.data_as<T>(), static_cast<int>(m),
                                  static_cast<int>(n), static_cast<int>(k), 0},
               tiling, stream);
    }
  });
}

void skinny_gemm_silu_and_mul(Tensor& out, const Tensor& x, const Tensor& weight, const Tensor* bias,
                              cudaStream_t stream, SkinnyGemmTiling tiling) {
  const int64_t m = check_operands("skinny_gemm_silu_and_mul", out, x, weight, bias), n = weight.dim(0),
                k = weight.dim(1);
  LLMCORE_CHECK(n % 2 == 0, "skinny_gemm_silu_and_mul: weight ", shape_str(weight.shape()),
                " must have an even row count (gate rows, then up rows)");
  util::check_cuda(out, "skinny_gemm_silu_and_mul out", x.dtype(), {m, n / 2});
  if (m == 0 || n == 0) return;
  if (tiling.col_tiles == 0) tiling = skinny_gemm_default_tiling(m);
  LLMCORE_DISPATCH_HALF(x.dtype(), T, {
    dispatch_gated(SkinnyParams<T, T>{x.data_as<T>(), weight.data_as<T>(), bias != nullptr ? bias->data_as<T>() : nullptr,
                                      out.data_as<T>(), static_cast<int>(m), static_cast<int>(n), static_cast<int>(k),
                                      static_cast<int>(n / 2)},
                   tiling.col_tiles, stream);
  });
}

}  // namespace llmcore::kernels
