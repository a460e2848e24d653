// Device building blocks of paged attention (paged_attention.cu): launch parameters, the
// tensor-core primitives, and the online softmax over one key tile and its fold over
// partitions.
//
// Every floating-point step that decides an output's bits is written with explicit
// round-to-nearest intrinsics (__fmul_rn, __fadd_rn, __fmaf_rn, ...) and one exp2
// instruction, so the compiler can neither contract nor reorder them: the per-partition
// state computed by a split CTA, by a CTA that walks all partitions, and the fold done in
// registers or by the combine kernel run the same operations in the same order.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

#include "kernels/attention/attention.h"
#include "kernels/common/mma.cuh"

namespace llmcore::kernels::attention_detail {

constexpr int kPartition = kPagedAttentionPartitionSize;

// The CTA of each kernel mode. A warp owns 16 query rows (one mma row tile) and attends them to
// a key tile as one unit, so a row's bits are the same whichever CTA shape it runs in.
//  * walking CTAs (kSplit false): 4 warps, 64 rows of one sequence, all partitions of their
//    keys, K/V double-buffered.
//  * split CTAs (kSplit true): one partition of one decode row's group of query heads (16 of
//    them per CTA). Only warp 0 computes; all 4 warps look up blocks and issue the K/V copies,
//    and the 16-row Q tile and the absent running fold let 3 CTAs share an SM (decode is bound
//    by reading K/V; measured best of 1/2/4 warps x 1/2 stages on an H200).
template <bool kSplit>
struct CtaShape {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kRows = kSplit ? 16 : kWarps * 16;
  static constexpr int kStages = 2;
};
constexpr int kBlockM = CtaShape<false>::kRows;  // rows per walking CTA
constexpr int kSplitRows = CtaShape<true>::kRows;  // rows per split CTA
constexpr int kCombineThreads = 128;

// Keys per tile: a multiple of 16 (mma k) dividing kPartition. Smaller for D = 256 so that two
// K/V stages and the Q tile fit the shared memory of sm_80 (164 KB).
template <int D>
struct TileShape {
  static constexpr int kBlockN = D > 128 ? 32 : 64;
  // smem row pitch in elements: rows stay 16-byte aligned and 8 consecutive rows hit distinct
  // bank groups (conflict-free fragment loads and ldmatrix).
  static constexpr int kStride = D + 8;
  static constexpr int kChunks = D / 8;  // 16-byte chunks per [D] row
  // Q tile [rows, kStride], K and V [stages, kBlockN, kStride] each, then the cache offsets of
  // the keys of each stage [stages, kBlockN] int64.
  static constexpr size_t smem_bytes(int rows, int stages, size_t elem) {
    return static_cast<size_t>(rows + 2 * stages * kBlockN) * kStride * elem +
           static_cast<size_t>(stages) * kBlockN * sizeof(int64_t);
  }
  static_assert(D % 16 == 0 && (D / 8) % 2 == 0, "head_dim must be a multiple of 16");
  static_assert(kPartition % kBlockN == 0, "tiles must not straddle partitions");
};

struct Params {
  void* out;                        // [T, Hq * D]
  const void* qkv;                  // [T, (Hq + 2 Hkv) * D]
  const void* k_cache;              // [NB, Hkv, BS, D]
  const void* v_cache;              // [NB, Hkv, BS, D]
  const int32_t* query_start_loc;   // [S + 1]
  const int32_t* seq_lens;          // [S]
  const int32_t* block_tables;      // [S, max_blocks_per_seq]
  float* part_out;                  // [S, Hq, max_partitions, D] unnormalized partition outputs
  float* part_ml;                   // [S, Hq, max_partitions, 2] (max score in log2 units, sum)
  int64_t num_tokens;               // T
  int64_t qkv_width;                // (Hq + 2 Hkv) * D
  int num_seqs;                     // S
  int num_heads;                    // Hq
  int num_kv_heads;                 // Hkv
  int group;                        // Hq / Hkv
  int num_blocks;                   // NB
  int block_size;                   // BS
  int max_blocks_per_seq;
  int max_partitions;               // ceil(max_seq_len / kPartition), >= 1
  int split_row_tiles;              // ceil(group / kSplitRows): split CTAs per (partition, kv head)
  int sliding_window;               // 0: full attention
  float scale_log2;                 // scale * log2(e): scores in log2 units
};

// --- row bookkeeping ---------------------------------------------------------------------------

__device__ __forceinline__ int first_key_of(int pos, int window) {
  return window > 0 ? max(0, pos - window + 1) : 0;
}

// Whether a sequence's rows are computed one CTA per partition (then combined) rather than by
// CTAs that walk all partitions. Either way gives the same bits; splitting is only for
// parallelism, and depends only on the sequence itself: a single query token whose keys span
// more than one partition.
__device__ __forceinline__ bool is_split_seq(int query_len, int seq_len, int window,
                                             int max_partitions) {
  if (query_len != 1 || seq_len < 1) return false;
  const int pos = seq_len - 1;
  const int last = pos / kPartition;
  return last > first_key_of(pos, window) / kPartition && last < max_partitions;
}

// First walking grid slot of sequence s: floor(query_start_loc[s] * group / kBlockM) + s.
// Sequence s owns slots [slot(s), slot(s + 1)), at least ceil(query_len * group / kBlockM).
__device__ __forceinline__ int64_t tile_slot_begin(const Params& p, int s) {
  return static_cast<int64_t>(p.query_start_loc[s]) * p.group / kBlockM + s;
}

// The sequence owning walking grid slot `slot`: the last s with tile_slot_begin(s) <= slot.
__device__ __forceinline__ int find_slot_seq(const Params& p, int64_t slot) {
  int lo = 0, hi = p.num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (tile_slot_begin(p, mid) <= slot) lo = mid; else hi = mid - 1;
  }
  return lo;
}

// --- numerics shared by the attention and combine kernels -------------------------------------

// 2^x with one instruction (ex2.approx.ftz): 2^-inf = +0, 2^NaN = NaN.
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Folding a partition (max m_part, sum, out) into a running state (max m_run, ...): the weights
// of both sides. A side whose max is the new max gets exactly 1, an empty side (-inf) gets 0.
__device__ __forceinline__ void fold_weights(float m_run, float m_part, float& m_new, float& w_run,
                                             float& w_part) {
  m_new = fmaxf(m_run, m_part);
  w_run = m_run == m_new ? 1.0f : exp2_approx(__fsub_rn(m_run, m_new));
  w_part = m_part == m_new ? 1.0f : exp2_approx(__fsub_rn(m_part, m_new));
}

__device__ __forceinline__ float fold_value(float run, float w_run, float part, float w_part) {
  return __fmaf_rn(run, w_run, __fmul_rn(part, w_part));
}

// The output element; + 0 turns a -0 into +0 so a row with an exact zero has one encoding.
__device__ __forceinline__ float finalize(float out_sum, float weight_sum) {
  return __fadd_rn(__fdiv_rn(out_sum, weight_sum), 0.0f);
}

// --- 16-bit types and tensor-core primitives ----------------------------------------------------

template <typename T>
struct HalfType;

template <>
struct HalfType<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  static constexpr uint16_t kNaNBits = 0x7fc0;
  // (lo, hi) rounded to a packed pair (lo in the low 16 bits); the rounded values back in rlo/rhi.
  __device__ static uint32_t pack(float lo, float hi, float& rlo, float& rhi) {
    const T2 v = __floats2bfloat162_rn(lo, hi);
    rlo = __low2float(v);
    rhi = __high2float(v);
    uint32_t u;
    memcpy(&u, &v, 4);
    return u;
  }
  __device__ static T2 pair(float lo, float hi) { return __floats2bfloat162_rn(lo, hi); }
  __device__ static __nv_bfloat16 one(float x) { return __float2bfloat16_rn(x); }
  // d[16x8] += a[16x16] * b[16x8], fp32 accumulate.
  __device__ static void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    mma_m16n8k16<__nv_bfloat16>(d, a[0], a[1], a[2], a[3], b0, b1);
  }
};

template <>
struct HalfType<__half> {
  using T2 = __half2;
  static constexpr uint16_t kNaNBits = 0x7e00;
  __device__ static uint32_t pack(float lo, float hi, float& rlo, float& rhi) {
    const T2 v = __floats2half2_rn(lo, hi);
    rlo = __low2float(v);
    rhi = __high2float(v);
    uint32_t u;
    memcpy(&u, &v, 4);
    return u;
  }
  __device__ static T2 pair(float lo, float hi) { return __floats2half2_rn(lo, hi); }
  __device__ static __half one(float x) { return __float2half_rn(x); }
  __device__ static void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    mma_m16n8k16<__half>(d, a[0], a[1], a[2], a[3], b0, b1);
  }
};

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, asynchronous (sm_80+).
__device__ __forceinline__ void cp_async16(void* smem_dst, const void* global_src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(smem_dst)),
               "l"(global_src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Four 8x8 b16 matrices, transposed: the B fragments of two adjacent n-tiles of a row-major
// [k][n] smem operand. Lane l gives the address of row (l & 15) of the 16-row k slab, at column
// offset 8 * (l >> 4).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

// Four 8x8 b16 matrices, not transposed: the A fragment of a 16x16 row-major smem tile, or the B
// fragments of two adjacent n-tiles of a [n][k] smem operand (addresses per lane: attend_tile).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

// Sum over the 4 lanes of a quad. Lane order does not matter: each step adds a value and its
// partner's, and a + b == b + a, so all four lanes end with ((x0 + x1) + (x2 + x3)).
__device__ __forceinline__ float quad_sum(float x) {
  x = __fadd_rn(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return __fadd_rn(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

// --- one warp, one key tile ----------------------------------------------------------------
//
// Fragment layout of mma.m16n8k16 (g = lane / 4, q = lane % 4): accumulator c[0..1] are row g,
// columns 2q, 2q + 1 of the n-tile; c[2..3] row g + 8. A row of the warp's 16 is thus held by
// the 4 lanes of one quad, and index i in the state arrays below is 0 for row g, 1 for g + 8.

// The online-softmax state of one partition for the warp's rows, per thread.
template <int D>
struct PartitionState {
  float o[D / 8][4];  // unnormalized output: n-tile of 8 head-dim columns x fragment
  float m[2];         // running max score (log2 units), quad-uniform
  float l[2];         // this thread's share of the weight sum (quad-reduced at the end)

  __device__ __forceinline__ void reset() {
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
      for (int c = 0; c < 4; ++c) o[dt][c] = 0.0f;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      m[i] = -INFINITY;
      l[i] = 0.0f;
    }
  }
};

// Attends the warp's 16 rows to one key tile in smem.
//   q_s   [16, kStride]  the warp's query rows
//   k_s   [kBlockN, kStride], v_s [kBlockN, kStride]  keys tile_key0 .. tile_key0 + kBlockN - 1
// Key j is visible to row i iff key_lo[i] <= j <= key_hi[i] (an invalid row has an empty
// range); invisible keys get weight exactly 0 whatever their smem contents are. all_visible
// (warp-uniform): every row of the warp sees every key of the tile, so the mask is skipped (the
// select would keep every score).
template <typename T, int D>
__device__ __forceinline__ void attend_tile(PartitionState<D>& st, const T* q_s, const T* k_s,
                                            const T* v_s, int tile_key0, const int (&key_lo)[2],
                                            const int (&key_hi)[2], float scale_log2, int lane,
                                            bool all_visible) {
  using Shape = TileShape<D>;
  using H = HalfType<T>;
  constexpr int kN = Shape::kBlockN, kS = Shape::kStride, kNT = kN / 8;
  const int q = lane % 4;

  // Scores: s[nt] is the 16x8 tile of keys nt*8 .. nt*8+7; each a dot product over D in
  // k-steps of 16, always in the same order.
  float s[kNT][4];
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
    for (int c = 0; c < 4; ++c) s[nt][c] = 0.0f;
  // Fragments by ldmatrix.x4: Q's A fragment (matrices: rows 0-7 / 8-15 x columns 0-7 / 8-15 of
  // the k-step), and the B fragments of n-tiles nt and nt + 1 (keys nt*8.. and nt*8+8.., columns
  // 0-7 / 8-15 each); lane l addresses row l & 7 of matrix l >> 3.
  static_assert(kNT % 2 == 0, "n-tiles in pairs");
  const int a_row = (lane & 7) + 8 * ((lane >> 3) & 1), a_col = 8 * (lane >> 4);
  const int b_row = (lane & 7) + 8 * (lane >> 4), b_col = 8 * ((lane >> 3) & 1);
#pragma unroll
  for (int kd = 0; kd < D / 16; ++kd) {
    uint32_t a[4];
    ldmatrix_x4(a, q_s + a_row * kS + kd * 16 + a_col);
#pragma unroll
    for (int nt = 0; nt < kNT; nt += 2) {
      uint32_t b[4];
      ldmatrix_x4(b, k_s + (nt * 8 + b_row) * kS + kd * 16 + b_col);
      H::mma(s[nt], a, b[0], b[1]);
      H::mma(s[nt + 1], a, b[2], b[3]);
    }
  }

  // Mask (a select, so NaN or garbage in invisible keys is dropped) and scale to log2 units.
  // One warp-uniform branch: per-element conditions would compile to per-element branches.
  float tile_max[2] = {-INFINITY, -INFINITY};
  if (all_visible) {
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        s[nt][c] = __fmul_rn(s[nt][c], scale_log2);
        tile_max[c / 2] = fmaxf(tile_max[c / 2], s[nt][c]);
      }
  } else {
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int i = c / 2;
        const int key = tile_key0 + nt * 8 + q * 2 + (c & 1);
        const bool visible = key >= key_lo[i] && key <= key_hi[i];
        s[nt][c] = visible ? __fmul_rn(s[nt][c], scale_log2) : -INFINITY;
        tile_max[i] = fmaxf(tile_max[i], s[nt][c]);
      }
  }

  float alpha[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float m_new = fmaxf(st.m[i], quad_max(tile_max[i]));
    alpha[i] = st.m[i] == m_new ? 1.0f : exp2_approx(__fsub_rn(st.m[i], m_new));
    st.m[i] = m_new;
  }

  // Weights, rounded to T for the PV product; the weight sum adds the rounded values so the
  // output is an exact weighted mean of V under the weights actually applied.
  uint32_t pk[kNT][2];
  float tile_sum[2] = {0.0f, 0.0f};
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const bool empty = st.m[i] == -INFINITY;
      const float p0 = empty ? 0.0f : exp2_approx(__fsub_rn(s[nt][2 * i], st.m[i]));
      const float p1 = empty ? 0.0f : exp2_approx(__fsub_rn(s[nt][2 * i + 1], st.m[i]));
      float r0, r1;
      pk[nt][i] = H::pack(p0, p1, r0, r1);
      tile_sum[i] = __fadd_rn(__fadd_rn(tile_sum[i], r0), r1);
    }
#pragma unroll
  for (int i = 0; i < 2; ++i) st.l[i] = __fmaf_rn(st.l[i], alpha[i], tile_sum[i]);
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
    for (int c = 0; c < 4; ++c) st.o[dt][c] = __fmul_rn(st.o[dt][c], alpha[c / 2]);

  // o += P V over k-steps of 16 keys; the P accumulator fragments are the A fragments.
#pragma unroll
  for (int kk = 0; kk < kN / 16; ++kk) {
    const uint32_t a[4] = {pk[2 * kk][0], pk[2 * kk][1], pk[2 * kk + 1][0], pk[2 * kk + 1][1]};
#pragma unroll
    for (int dt = 0; dt < D / 8; dt += 2) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, v_s + (kk * 16 + (lane & 15)) * kS + dt * 8 + (lane >> 4) * 8);
      H::mma(st.o[dt], a, b[0], b[1]);
      H::mma(st.o[dt + 1], a, b[2], b[3]);
    }
  }
}

}  // namespace llmcore::kernels::attention_detail
