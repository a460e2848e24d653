// Paged attention: the attention kernels, the split-K combine kernel and the host launcher.
//
// Work split. A CTA handles one sequence, one kv head and a tile of that sequence's query rows;
// the rows are (token, query head of the kv head's group) pairs, row r = token (r / group),
// head (r % group), so a decode step's group of query heads shares one CTA and K/V are read
// once per group. Keys are visited in tiles of kBlockN aligned at absolute positions, grouped
// in partitions of kPartition keys (aligned too). A "walking" CTA (4 warps, 64 rows) visits
// all partitions of its rows; a decode row whose keys span several partitions is "split": one
// CTA (1 warp, 16 rows) per partition, then a combine kernel (CtaShape in the .cuh). For head
// dim 128 the walking CTAs of prompts run in a kernel of their own (8 math warps, 128 rows, and
// a warpgroup whose first warp copies K/V by TMA), on Hopper's warpgroup MMA (kSeparateLongWalk).
//
// Why a row's bits do not depend on the batch, the chunking or the prefix cache:
//  * mma rows are independent: a score or output row depends only on its own Q row and K/V.
//    The warpgroup MMA computes each row with the same chain of k16 steps as mma.sync and rounds
//    alike (benchmarks/kernels/probe_wgmma_bits.cu), so the prompt kernel's rows match too.
//  * Per partition, a row's online softmax visits the same tiles in the same order; a CTA may
//    visit extra tiles that are fully masked for the row, and such a tile leaves the state bit
//    for bit unchanged (its max is -inf, so the rescale factor is exactly 1 and every weight
//    exactly 0; a -inf state stays -inf / 0). Masked keys are dropped by a select, and their
//    smem contents (real data, zeros) only ever meet a weight of exactly 0.
//  * A row's result is the left fold, in partition order, of its per-partition states
//    (fold_weights / fold_value), from the empty state; folding in a partition that is empty
//    for the row changes nothing. A CTA walking all partitions folds in registers; a split
//    sequence's CTAs write each partition's state to the workspace and the combine kernel
//    folds them with the same function. Both then divide with finalize().
//  * All of that arithmetic uses explicit round-to-nearest intrinsics (no contraction).
// Only the sign of an exact zero could differ between paths, and finalize() canonicalizes it.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/attention/attention.h"
#include "kernels/attention/paged_attention_tile.cuh"
#include "kernels/common/device_caps.h"
#include "kernels/common/dispatch.cuh"
#include "kernels/common/dynamic_smem.h"
#include "kernels/common/pdl.cuh"

namespace llmcore::kernels {

namespace {

using namespace attention_detail;

// Walking CTAs of head dim 128 run in two kernels on sm_90 and later (Params::long_walk): one for
// "long" sequences (more than 16 rows: prompts and prompt chunks), CTAs of two warpgroups and 128
// rows whose tiles are swizzled for the warpgroup MMA (sm_90a) and copied by TMA, and one for the
// rest (decode rows), with the padded tiles and the registers of the mma.sync path alone. Other
// head dims, older GPUs (the long kernel's ~200 KB of smem exceed sm_86/89's 99 KB), and caches
// whose block size TMA boxes cannot follow (set_kv_maps) walk in one kernel (kLong false).
// Either way a row gets the same bits.
template <int D>
constexpr bool kSeparateLongWalk = D == 128;
__device__ __forceinline__ bool is_long_seq(int query_len, int group) {
  return static_cast<int64_t>(query_len) * group > kSplitRows;
}

// out (or the workspace) for one tile of query rows of one (sequence, kv head).
// kSplit false: grid (Hkv, walking slots) with prompt rows, else (walking slots, Hkv); the CTA
//               walks every partition of its rows' keys and writes out. Split sequences are
//               skipped, and where long_walk, the sequences of the other walking kernel (kLong:
//               is_long_seq).
// kSplit true:  grid (max_partitions, Hkv * split_row_tiles, S); the CTA computes partition
//               blockIdx.x for 16 of a split sequence's query heads and writes its state to
//               part_out / part_ml.
// The CTA's work, for one role: kCopyRole, the copying warpgroup of long CTAs on the warpgroup
// MMA (only its math-free parts are compiled), else every other thread.
template <typename T, int D, bool kSplit, bool kLong, bool kCopyRole>
__device__ __forceinline__ void attention_cta(const Params& p) {
  using Shape = TileShape<D, kLong>;  // swizzled for the warpgroup MMA
  constexpr bool kSwizzle = Shape::kSwizzled;
  using Cta = CtaShape<kSplit, kLong>;
  using H = HalfType<T>;
  constexpr int kN = Shape::kBlockN, kChunks = Shape::kChunks;
  constexpr int kRows = Cta::kRows, kThreads = Cta::kThreads, kStages = Cta::kStages;
  // Long CTAs attend with the warpgroup MMA where the build targets sm_90a, each warpgroup its 64
  // rows; the rest with mma.sync, per warp. Both give the same bits (paged_attention_tile.cuh).
  constexpr bool kWgmma = kLong && LLMCORE_ATTENTION_WGMMA;
  static_assert(kWgmma || !kCopyRole, "a copying warpgroup only on the warpgroup MMA");
  // Tiles in TileShape's layout; the swizzled ones start 1024-byte aligned (tile sizes are
  // multiples of 1024 bytes), as the warpgroup MMA's descriptors need.
  extern __shared__ __align__(1024) unsigned char smem[];
  constexpr int kQElems = Shape::tile_elems(kRows), kKVElems = Shape::tile_elems(kN);
  T* q_s = reinterpret_cast<T*>(smem);  // [kRows, D]
  T* k_s = q_s + kQElems;               // [kStages][kN, D]
  T* v_s = k_s + kStages * kKVElems;    // [kStages][kN, D]
  // Per stage, where key n of the tile starts in either cache (elements), or kNoKey / kBadBlock.
  int64_t* key_off_s = reinterpret_cast<int64_t*>(v_s + kStages * kKVElems);  // [kStages, kN]
  constexpr int64_t kNoKey = -1, kBadBlock = -2;
  // Long CTAs: the fold of finished partitions, math-thread-private, [D / 2 values][math threads].
  float* run_o_s = reinterpret_cast<float*>(key_off_s + kStages * kN);

  int seq, kv_head, part = 0;
  int64_t tile;
  if constexpr (kSplit) {
    seq = blockIdx.z;
    part = blockIdx.x;
    kv_head = blockIdx.y / p.split_row_tiles;
    tile = blockIdx.y % p.split_row_tiles;
  } else {
    // Slots from the last: a sequence's last row tiles see the most keys, and started first they
    // leave the short ones to fill the tail of the grid (4096-token prompt 164 -> 183 TFLOP/s).
    // With prompt rows (heads_inner) each slot goes to every kv head before the next slot, so
    // the order holds across heads too (CTAs start in blockIdx order): a 1024-token prompt 136
    // -> 189 TFLOP/s on the H100. Decode rows keep one head's slots together (each CTA has the
    // same work; batch 256 at context 256 lost 3% of its bandwidth with heads innermost).
    // Grid (Hkv, slots) or (slots, Hkv): no division to find either.
    kv_head = static_cast<int>(p.heads_inner ? blockIdx.x : blockIdx.y);
    const int64_t slot = p.heads_inner ? static_cast<int64_t>(gridDim.y) - 1 - blockIdx.y
                                       : static_cast<int64_t>(gridDim.x) - 1 - blockIdx.x;
    seq = find_slot_seq<kRows>(p, slot);
    tile = slot - tile_slot_begin<kRows>(p, seq);
  }
  // Until pdl_wait() the CTA reads only the step's metadata, which no kernel writes; every CTA
  // waits before it exits, so this grid ends after the kernel before it (common/pdl.cuh).
  const int q_begin = p.query_start_loc[seq];
  const int query_len = p.query_start_loc[seq + 1] - q_begin;
  const int seq_len = p.seq_lens[seq];
  const int group = p.group;
  const int64_t num_rows = static_cast<int64_t>(query_len) * group;
  if (query_len <= 0 || tile < 0 || tile * kRows >= num_rows ||
      kSplit != is_split_seq(query_len, seq_len, p.sliding_window, p.max_partitions) ||
      (!kSplit && kSeparateLongWalk<D> && p.long_walk && kLong != is_long_seq(query_len, group))) {
    pdl_wait();
    return;
  }
  const int row_begin = static_cast<int>(tile * kRows);
  const int row_end = static_cast<int>(min(num_rows, static_cast<int64_t>(row_begin) + kRows));
  const int pos0 = seq_len - query_len;  // position of the sequence's first query token
  const int window = p.sliding_window;

  // Keys any row of the CTA can see: [key_lo, key_hi). Positions are monotonic in the row.
  int key_lo = first_key_of(pos0 + row_begin / group, window);
  int key_hi = pos0 + (row_end - 1) / group + 1;
  if constexpr (kSplit) {
    key_lo = max(key_lo, part * kPartition);
    key_hi = min(key_hi, (part + 1) * kPartition);
    if (key_lo >= key_hi) {  // a partition outside the row's keys: never combined
      pdl_wait();
      return;
    }
  }
  const int t_begin = key_lo / kN;
  const int t_end = key_lo < key_hi ? (key_hi + kN - 1) / kN : t_begin;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (kWgmma && (smem_u32(smem) & 1023) != 0) __trap();  // the descriptors' swizzle needs it
  const int warp_row_begin = row_begin + warp * 16;
  const bool warp_active = warp_row_begin < row_end;
  const int warp_row_end = min(row_end, warp_row_begin + 16);
  // Keys the warp's rows can see, to skip tiles that are masked for all of them.
  const int warp_key_lo = warp_active ? first_key_of(pos0 + warp_row_begin / group, window) : 0;
  const int warp_key_hi = warp_active ? pos0 + (warp_row_end - 1) / group + 1 : 0;
  // Keys every row of the warp sees ([lo, hi] inclusive; empty unless all 16 rows are valid).
  const bool warp_full = warp_row_begin + 16 <= row_end;
  const int warp_all_lo = warp_full ? first_key_of(pos0 + (warp_row_end - 1) / group, window) : 1;
  const int warp_all_hi = warp_full ? pos0 + warp_row_begin / group : 0;
  // This thread's two rows (g and g + 8 of the warp): visible keys [lo, hi] inclusive.
  int row[2], row_key_lo[2], row_key_hi[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    row[i] = warp_row_begin + lane / 4 + 8 * i;
    const int pos = pos0 + row[i] / group;
    const bool valid = row[i] < row_end;
    row_key_lo[i] = valid ? first_key_of(pos, window) : 1;
    row_key_hi[i] = valid ? pos : 0;
  }

  const T* qkv = static_cast<const T*>(p.qkv);
  const T* k_cache = static_cast<const T*>(p.k_cache);
  const T* v_cache = static_cast<const T*>(p.v_cache);
  const int32_t* table = p.block_tables + static_cast<int64_t>(seq) * p.max_blocks_per_seq;

  // Where the keys of tile t start in either cache, in two steps so that the table read can be
  // issued early: key_block() reads the block-table entry of this thread's key (one key per
  // thread, kN <= kThreads), store_key() turns it into the offset in the stage's slot, before
  // a barrier; load_kv() then copies the 16-byte chunks. Keys outside [key_lo, key_hi) are
  // never read (zeros). A block id outside the cache is never dereferenced: its keys and values
  // become NaN, which turns every row of the warps that attend that tile into NaN (0 * NaN).
  // Shared with the long kernel's TMA copies: the block-table entry of `key` (-1 past the
  // table), whether a block id lies in the cache, and the cache row (D elements) of `key` there.
  auto table_block = [&](int key) -> int64_t {
    const int b = key / p.block_size;
    return b < p.max_blocks_per_seq ? table[b] : -1;
  };
  auto in_cache = [&](int64_t block) { return block >= 0 && block < p.num_blocks; };
  auto cache_row = [&](int64_t block, int key) {
    return (block * p.num_kv_heads + kv_head) * p.block_size + key % p.block_size;
  };
  static_assert(kN <= kThreads, "one key per thread");
  constexpr int64_t kOutside = INT64_MIN;  // key_block(): no key of the row range
  auto key_block = [&](int t) -> int64_t {
    const int key = t * kN + threadIdx.x;
    if (threadIdx.x >= kN || key < key_lo || key >= key_hi) return kOutside;
    return table_block(key);
  };
  auto store_key = [&](int t, int64_t block, int stage) {
    if (threadIdx.x >= kN) return;
    const int key = t * kN + threadIdx.x;
    int64_t off = kNoKey;
    if (block != kOutside) off = in_cache(block) ? cache_row(block, key) * D : kBadBlock;
    key_off_s[stage * kN + threadIdx.x] = off;
  };
  auto locate_keys = [&](int t, int stage) { store_key(t, key_block(t), stage); };

  // Q tile: row r of the CTA is token q_begin + (row_begin + r) / group, head kv_head * group
  // + (row_begin + r) % group; rows past the sequence are zero. Thread i copies chunks i,
  // i + kThreads, ... in row-major order: a warp reads whole rows (full 128-byte lines).
  auto load_q = [&] {
    // (On the warpgroup MMA, the math threads.)
    constexpr int kLoaders = kWgmma ? Cta::kMathThreads : kThreads;
    for (int c = threadIdx.x; c < kRows * kChunks; c += kLoaders) {
      const int r = c / kChunks, chunk = c % kChunks;
      T* dst = q_s + Shape::off(r, chunk);
      const int rr = row_begin + r;
      const int64_t token = static_cast<int64_t>(q_begin) + rr / group;
      if (rr < row_end && token >= 0 && token < p.num_tokens) {
        const int head = kv_head * group + rr % group;
        cp_async16(dst, qkv + token * p.qkv_width + static_cast<int64_t>(head) * D + chunk * 8);
      } else {
        *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
      }
    }
  };
  const uint32_t nan2 = (static_cast<uint32_t>(H::kNaNBits) << 16) | H::kNaNBits;
  auto load_kv = [&](int stage) {
    T* kd = k_s + stage * kKVElems;
    T* vd = v_s + stage * kKVElems;
#pragma unroll
    for (int i = 0; i < (kN * kChunks + kThreads - 1) / kThreads; ++i) {
      const int c = threadIdx.x + i * kThreads;
      if ((kN * kChunks) % kThreads != 0 && c >= kN * kChunks) break;
      const int n = c / kChunks, chunk = c % kChunks;
      const int64_t off = key_off_s[stage * kN + n];
      T* kdst = kd + Shape::off(n, chunk);
      T* vdst = vd + Shape::off(n, chunk);
      if (off >= 0) {
        cp_async16(kdst, k_cache + off + chunk * 8);
        cp_async16(vdst, v_cache + off + chunk * 8);
      } else {
        const uint4 fill =
            off == kBadBlock ? make_uint4(nan2, nan2, nan2, nan2) : make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4*>(kdst) = fill;
        *reinterpret_cast<uint4*>(vdst) = fill;
      }
    }
  };

  PartitionState<D> st;  // the partition being computed
  st.reset();
  // The fold of the finished partitions (walking CTAs only).
  float run_o_r[kSplit || kLong ? 1 : D / 8][4], run_m[2], run_l[2];
  auto run_o = [&](int dt, int c) -> float& {
    if constexpr (kLong)
      return run_o_s[(dt * 4 + c) * Cta::kMathThreads + threadIdx.x];
    else
      return run_o_r[dt][c];
  };
  if constexpr (!kSplit) {
    if constexpr (!kCopyRole) {
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
        for (int c = 0; c < 4; ++c) run_o(dt, c) = 0.0f;
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      run_m[i] = -INFINITY;
      run_l[i] = 0.0f;
    }
  }

  // The end of tile t's math, per warp: a finished partition is folded into the running state
  // (walking CTAs) or written to the workspace (split CTAs).
  auto finish_tile = [&](int t) {
    const bool partition_done = t + 1 == t_end || ((t + 1) * kN) % kPartition == 0;
    if (warp_active && partition_done) {
      float l_sum[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) l_sum[i] = quad_sum(st.l[i]);
      if constexpr (kSplit) {
        const int q = lane % 4;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          if (row[i] >= row_end) continue;
          const int head = kv_head * group + row[i] % group;
          const int64_t slot =
              (static_cast<int64_t>(seq) * p.num_heads + head) * p.max_partitions + part;
          float* dst = p.part_out + slot * D;
#pragma unroll
          for (int dt = 0; dt < D / 8; ++dt)
            *reinterpret_cast<float2*>(dst + dt * 8 + q * 2) =
                make_float2(st.o[dt][2 * i], st.o[dt][2 * i + 1]);
          if (q == 0)
            *reinterpret_cast<float2*>(p.part_ml + slot * 2) = make_float2(st.m[i], l_sum[i]);
        }
      } else {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          float m_new, w_run, w_part;
          fold_weights(run_m[i], st.m[i], m_new, w_run, w_part);
          run_m[i] = m_new;
          run_l[i] = fold_value(run_l[i], w_run, l_sum[i], w_part);
#pragma unroll
          for (int dt = 0; dt < D / 8; ++dt)
#pragma unroll
            for (int c = 2 * i; c < 2 * i + 2; ++c)
              run_o(dt, c) = fold_value(run_o(dt, c), w_run, st.o[dt][c], w_part);
        }
      }
      st.reset();
    }
  };

  if constexpr (kWgmma) {
    // Long CTAs on the warpgroup MMA: eight math warps (two warpgroups of 64 rows) and a copying
    // warpgroup whose warp 8 issues the copies (warps 9-11 only lend their registers), kStages
    // K/V stages filled by TMA. Tile t goes to stage (t - t_begin) % kStages. The copying warp
    // fills the stages, then each later tile once every math warp has arrived on the stage's
    // "empty" barrier (done with the tile before); lane j issues the
    // copies of key segment j (p.tma_seg_rows keys of one cache block; a segment without a key of
    // [key_lo, key_hi) is not copied) after lane 0 posted the stage's bytes on its "full"
    // barrier, and the table entries of a tile are read a tile ahead. The math warps wait on
    // "full", never on each other (no CTA barrier per tile), so the copies of the next tiles and
    // either warpgroup's softmax run beside the other's products. The scores of tile t + 1 are
    // issued before tile t's softmax and run beside it, from Q's A fragments in registers (the
    // math warps have 224 registers: setmaxnreg), so the scores read only K from smem.
    // No branch may surround a warpgroup MMA or its wait (ptxas would serialize them), so every
    // warpgroup attends every tile of the CTA (a tile masked for some of its rows, or a
    // warpgroup without rows, leaves those rows' state unchanged), and the last tile is peeled.
    static_assert(kStages >= 3 && kThreads == Cta::kMathThreads + 128,
                  "three or more stages, a copying warpgroup");
    constexpr int kCopyWarp = Cta::kMathWarps;
    const int wg = warp / 4;
    const T* q_wg = q_s + Shape::off(wg * 64, 0);
    uint64_t* full =
        reinterpret_cast<uint64_t*>(run_o_s + Cta::kMathThreads * (D / 2));  // [kStages]
    uint64_t* empty = full + kStages;  // [kStages]: each math warp arrives
    const int seg_rows = p.tma_seg_rows, segs = kN / seg_rows;
    constexpr int kSkip = -1;
    auto stage_of = [&](int t) { return (t - t_begin) % kStages; };
    auto parity_of = [&](int t) { return static_cast<uint32_t>((t - t_begin) / kStages) & 1u; };
    // The cache row of this lane's segment of tile t (copying warp), kSkip, or p.tma_oob_row (NaN)
    // for a block id outside the cache.
    auto segment_row = [&](int t) -> int {
      const int key0 = t * kN + lane * seg_rows;
      if (t >= t_end || lane >= segs || key0 + seg_rows <= key_lo || key0 >= key_hi) return kSkip;
      const int64_t block = table_block(key0);
      return in_cache(block) ? static_cast<int>(cache_row(block, key0)) : p.tma_oob_row;
    };
    auto issue = [&](int t, int seg_row) {  // copying warp; t < t_end
      const int stage = stage_of(t);
      if (t - kStages >= t_begin) mbar_wait(&empty[stage], parity_of(t - kStages));
      const unsigned copied = __ballot_sync(0xffffffffu, seg_row != kSkip);
      if (lane == 0)
        mbar_arrive_expect_tx(&full[stage],
                              static_cast<uint32_t>(__popc(copied) * seg_rows) * D * sizeof(T) * 2);
      __syncwarp();
      if (seg_row == kSkip) return;
      T* kd = k_s + stage * kKVElems + Shape::off(lane * seg_rows, 0);
      T* vd = v_s + stage * kKVElems + Shape::off(lane * seg_rows, 0);
#pragma unroll
      for (int cb = 0; cb < Shape::kColBlocks; ++cb) {
        tma_load_2d(kd + cb * (Shape::kColBlockBytes / sizeof(T)), &p.k_map, cb * 64, seg_row,
                    &full[stage]);
        tma_load_2d(vd + cb * (Shape::kColBlockBytes / sizeof(T)), &p.v_map, cb * 64, seg_row,
                    &full[stage]);
      }
    };
    auto wait_tile = [&](int t) { mbar_wait(&full[stage_of(t)], parity_of(t)); };
    if (!kCopyRole && threadIdx.x == 0) {
#pragma unroll
      for (int i = 0; i < kStages; ++i) {
        mbar_init(&full[i], 1);
        mbar_init(&empty[i], Cta::kMathWarps);
      }
      mbar_init_fence();
    }
    const bool copier = kCopyRole && warp == kCopyWarp;
    int first_rows[kStages], row_next = kSkip;
#pragma unroll
    for (int i = 0; i < kStages; ++i) first_rows[i] = copier ? segment_row(t_begin + i) : kSkip;
    if (copier) row_next = segment_row(t_begin + kStages);
    __syncthreads();  // the barriers' initialization
    pdl_wait();  // q and this step's keys and values come from the kernels before
    // Every row sees its own position, so t_begin < t_end unless the metadata is inconsistent
    // (seq_len < query_len); then nothing is attended and the rows come out as NaN (0 / 0), as
    // in the other kernels.
    if (t_begin < t_end) {
      if constexpr (kCopyRole) {
        if (copier) {
#pragma unroll
          for (int i = 0; i < kStages; ++i)
            if (t_begin + i < t_end) issue(t_begin + i, first_rows[i]);
        }
      } else {
        load_q();
        cp_async_commit();
        cp_async_wait<0>();
        fence_proxy_async();  // Q's smem, as the warpgroup MMA reads it
      }
      __syncthreads();
      if constexpr (kCopyRole) {
        if (copier) {
          for (int t = t_begin + kStages; t < t_end; ++t) {
            issue(t, row_next);
            row_next = segment_row(t + 1);
          }
        }
      } else {
        // Keys outside [key_lo, key_hi) of a tile at either end hold what the cache (or an
        // earlier tile) had there; their scores are dropped by the mask, and their values are
        // zeroed before P V reads them (0 * NaN would not be 0). Each warpgroup zeroes them all
        // before its own P V (the other may be writing the same zeros).
        const auto zero_outside_values = [&](int t) {
          T* vt = v_s + stage_of(t) * kKVElems;
          for (int c = threadIdx.x % 128; c < kN * kChunks; c += 128) {
            const int n = c / kChunks, key = t * kN + n;
            if (key < key_lo || key >= key_hi)
              *reinterpret_cast<uint4*>(vt + Shape::off(n, c % kChunks)) = make_uint4(0, 0, 0, 0);
          }
          fence_proxy_async();
          asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");  // this warpgroup
        };
        // The scores of tile t, issued an iteration ahead; the first tile's are waited for here,
        // so that no register the warpgroup MMA still writes crosses the loop's boundaries.
        uint32_t qa[D / 16][4];  // Q in registers: the scores read only K from smem
        wgmma_load_q<T, D>(qa, q_wg, warp % 4, lane);
        wait_tile(t_begin);
        float s_cur[8][4];
        wgmma_scores_issue<T, D>(s_cur, qa, k_s);
        wgmma_wait<0>();
        pin_registers(s_cur);
        const auto attend = [&](int t, auto has_next) {
          constexpr bool kNext = decltype(has_next)::value;
          const int stage = stage_of(t);
          if (t * kN < key_lo || (t + 1) * kN > key_hi) zero_outside_values(t);
          float s_next[8][4];
          if constexpr (kNext) {
            wait_tile(t + 1);
            wgmma_scores_issue<T, D>(s_next, qa, k_s + stage_of(t + 1) * kKVElems);
            wgmma_wait<1>();  // tile t's scores
          } else {
            wgmma_wait<0>();
          }
          pin_registers(s_cur);
          uint32_t pk[8][2];
          const bool all_visible = t * kN >= warp_all_lo && t * kN + kN - 1 <= warp_all_hi;
          tile_softmax<T, D>(st, s_cur, pk, t * kN, row_key_lo, row_key_hi, p.scale_log2, lane,
                             all_visible);
          wgmma_pv_issue<T, D>(st, pk, v_s + stage * kKVElems);
          wgmma_wait<0>();
          pin_registers(st.o);
          if constexpr (kNext) {
            pin_registers(s_next);
#pragma unroll
            for (int nt = 0; nt < 8; ++nt)
#pragma unroll
              for (int c = 0; c < 4; ++c) s_cur[nt][c] = s_next[nt][c];
          }
          finish_tile(t);
          __syncwarp();  // this warp is done with tile t's stage
          if (lane == 0) mbar_arrive(&empty[stage]);
        };
        for (int t = t_begin; t + 1 < t_end; ++t) attend(t, std::true_type{});
        attend(t_end - 1, std::false_type{});
      }
    }
  } else {
    // Pipeline: the offsets of tile t + 1 are published by the barrier that ends iteration t
    // (or the prologue's), its copies are issued before tile t is computed (two stages) or at
    // the start of iteration t + 1 (one stage).
    if (t_begin < t_end) locate_keys(t_begin, 0);
    if (kStages == 2 && t_begin + 1 < t_end) locate_keys(t_begin + 1, 1);
    pdl_wait();  // q and this step's keys and values come from the kernels before
    load_q();
    __syncthreads();
    if (kStages == 2 && t_begin < t_end) load_kv(0);
    cp_async_commit();
    for (int t = t_begin; t < t_end; ++t) {
      const int stage = kStages == 2 ? (t - t_begin) & 1 : 0;
      if constexpr (kStages == 2) {
        if (t + 1 < t_end) {
          load_kv(stage ^ 1);
          cp_async_commit();
          cp_async_wait<1>();
        } else {
          cp_async_wait<0>();
        }
      } else {
        load_kv(0);
        cp_async_commit();
        cp_async_wait<0>();
      }
      __syncthreads();
      // The table entries of tile t + 2 (two stages; tile t + 1's were located an iteration ago)
      // or t + 1 (one stage), read now and stored after the tile's math.
      const int t_next = kStages == 2 ? t + 2 : t + 1;
      const int64_t next_block = t_next < t_end ? key_block(t_next) : kOutside;

      const bool all_visible = t * kN >= warp_all_lo && t * kN + kN - 1 <= warp_all_hi;
      if (warp_active && t * kN < warp_key_hi && (t + 1) * kN > warp_key_lo)
        attend_tile<T, D, kSwizzle>(st, q_s + Shape::off(warp * 16, 0), k_s + stage * kKVElems,
                                    v_s + stage * kKVElems, t * kN, row_key_lo, row_key_hi,
                                    p.scale_log2, lane, all_visible);

      finish_tile(t);

      // Into a slot whose copies have all been issued.
      if (t_next < t_end) store_key(t_next, next_block, kStages == 2 ? stage : 0);
      __syncthreads();  // the next iteration's copies overwrite this stage
    }
  }
  cp_async_wait<0>();  // no copy may be in flight at exit (t_begin == t_end: the Q tile)

  if constexpr (!kSplit && !kCopyRole) {
    if (!warp_active) return;
    T* out = static_cast<T*>(p.out);
    const int q = lane % 4;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      if (row[i] >= row_end) continue;
      const int64_t token = static_cast<int64_t>(q_begin) + row[i] / group;
      if (token < 0 || token >= p.num_tokens) continue;
      const int head = kv_head * group + row[i] % group;
      T* dst = out + token * p.num_heads * D + static_cast<int64_t>(head) * D;
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt)
        *reinterpret_cast<typename H::T2*>(dst + dt * 8 + q * 2) =
            H::pair(finalize(run_o(dt, 2 * i), run_l[i]), finalize(run_o(dt, 2 * i + 1), run_l[i]));
    }
  }
}

template <typename T, int D, bool kSplit, bool kLong>
__global__ void __launch_bounds__(CtaShape<kSplit, kLong>::kThreads,
                                  CtaShape<kSplit, kLong>::min_blocks(D))
    PagedAttentionKernel(const __grid_constant__ Params p) {
  static_assert(!kLong || (!kSplit && kSeparateLongWalk<D>), "long walking CTAs: head dim 128");
  // A walking CTA lets the next kernel launch at once: the split kernel, or o_proj's decode GEMM,
  // which starts loading its weights (common/pdl.cuh). A split CTA does not, so that the
  // combine kernel, and the GEMM after it, take no SM room from split CTAs still to run.
  if constexpr (!kSplit) pdl_launch_dependents();
  using Cta = CtaShape<kSplit, kLong>;
  if constexpr (kLong && LLMCORE_ATTENTION_WGMMA) {
    // The copying warpgroup gives its registers to the math warpgroups first thing, and each
    // role runs code of its own from there (ptxas keeps a register count for code both run).
    if (threadIdx.x >= Cta::kMathThreads) {
      warpgroup_regs_dec<kCopyWarpgroupRegs>();
      attention_cta<T, D, kSplit, kLong, true>(p);
    } else {
      warpgroup_regs_inc<kMathWarpgroupRegs>();
      attention_cta<T, D, kSplit, kLong, false>(p);
    }
  } else {
    attention_cta<T, D, kSplit, kLong, false>(p);
  }
}

// out for the query token of each split sequence and head: the fold of its partitions
// [first_key / kPartition, pos / kPartition] from the workspace. Grid (S, Hq), D columns
// spread over the block's threads.
template <typename T, int D>
__global__ void __launch_bounds__(kCombineThreads) PagedAttentionCombineKernel(const Params p) {
  pdl_launch_dependents();
  const int seq = blockIdx.x, head = blockIdx.y;
  const int q_begin = p.query_start_loc[seq];
  const int query_len = p.query_start_loc[seq + 1] - q_begin;
  const int seq_len = p.seq_lens[seq];
  pdl_wait();  // the partitions' states come from the split kernel
  if (!is_split_seq(query_len, seq_len, p.sliding_window, p.max_partitions)) return;
  if (q_begin < 0 || q_begin >= p.num_tokens) return;
  const int pos = seq_len - 1;
  const int first = first_key_of(pos, p.sliding_window) / kPartition, last = pos / kPartition;
  const int64_t base = (static_cast<int64_t>(seq) * p.num_heads + head) * p.max_partitions;
  T* out = static_cast<T*>(p.out) + static_cast<int64_t>(q_begin) * p.num_heads * D +
           static_cast<int64_t>(head) * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float run_m = -INFINITY, run_l = 0.0f, run_o = 0.0f;
    for (int j = first; j <= last; ++j) {
      const float2 ml = *reinterpret_cast<const float2*>(p.part_ml + (base + j) * 2);
      float m_new, w_run, w_part;
      fold_weights(run_m, ml.x, m_new, w_run, w_part);
      run_m = m_new;
      run_l = fold_value(run_l, w_run, ml.y, w_part);
      run_o = fold_value(run_o, w_run, p.part_out[(base + j) * D + d], w_part);
    }
    out[d] = HalfType<T>::one(finalize(run_o, run_l));
  }
}

// --- host side ----------------------------------------------------------------------------------

// Partitions of the step's longest sequence; 1 (no split kernels, no workspace) when no row is a
// decode row (min_query_len > 1), so a step of prompts launches the walking kernel alone.
int max_partitions_of(const AttentionMetadata& meta) {
  if (meta.min_query_len > 1) return 1;
  return std::max(1, (meta.max_seq_len + kPartition - 1) / kPartition);
}

void check_device_tensor(const Tensor& t, const char* what, DType dtype, const Shape& shape) {
  LLMCORE_CHECK(t.device() == Device::kCUDA, what, " must be on the cuda device, got ",
                device_name(t.device()));
  t.check(what, dtype, shape);
  LLMCORE_CHECK(t.numel() == 0 || t.data() != nullptr, what, " has no data");
  LLMCORE_CHECK(reinterpret_cast<uintptr_t>(t.data()) % 16 == 0, what,
                " must be 16-byte aligned");
}

// The kernel's dynamic shared memory bytes, after raising its limit to that on the current
// device (an attribute per device and function: set once per device, under 64 devices).
template <typename T, int D, bool kSplit, bool kLong>
size_t prepare() {
  using Cta = CtaShape<kSplit, kLong>;
  // Tiles, then (long CTAs) the fold of finished partitions: D / 2 floats per math thread, and
  // the stages' barriers. Long CTAs (sm_90 and later) get kLongStagesWgmma stages (kStages is
  // that of the host pass; a build without sm_90a code runs two in the same room).
  const int stages = kLong ? kLongStagesWgmma : Cta::kStages;
  const size_t smem = TileShape<D, kLong>::smem_bytes(Cta::kRows, stages, sizeof(T)) +
                      (kLong ? static_cast<size_t>(Cta::kMathThreads) * (D / 2) * sizeof(float) +
                                   2 * stages * sizeof(uint64_t)
                             : 0);
  static std::atomic<uint64_t> done_devices{0};
  allow_dynamic_smem(reinterpret_cast<const void*>(PagedAttentionKernel<T, D, kSplit, kLong>), smem,
                     done_devices);
  return smem;
}

// The long kernel's K/V descriptors in p (Params::k_map ..); false where this cache does not suit
// them: a block size that is not a multiple of 8 dividing the 64-key tile or divisible by it
// (then all rows walk in the other kernel, with the same bits).
template <typename T, int D>
bool set_kv_maps(Params& p) {
  constexpr int kN = TileShape<D, true>::kBlockN;
  const int bs = p.block_size;
  if (bs % 8 != 0 || (kN % bs != 0 && bs % kN != 0)) return false;
  const int64_t rows = static_cast<int64_t>(p.num_blocks) * p.num_kv_heads * bs;
  if (rows + kN > 0x7fffffff) return false;  // box coordinates are int32
  p.tma_seg_rows = std::min(bs, kN);
  p.tma_oob_row = static_cast<int>(rows);
  constexpr bool kBF16 = std::is_same_v<T, __nv_bfloat16>;
  return tensor_map_2d_sw128(&p.k_map, p.k_cache, rows, D, p.tma_seg_rows, kBF16) &&
         tensor_map_2d_sw128(&p.v_map, p.v_cache, rows, D, p.tma_seg_rows, kBF16);
}

// The bounds of the step's query lengths in meta tell which walking kernels have work.
template <typename T, int D>
void launch(Params p, int64_t num_tokens, const AttentionMetadata& meta, cudaStream_t stream) {
  int device = 0;
  LLMCORE_CUDA_CHECK(cudaGetDevice(&device));
  p.long_walk = kSeparateLongWalk<D> && compute_capability_major(device) >= 9;
  // Walking slots of CTAs of m rows: sum over s of (floor(qsl[s+1] g / m) - floor(qsl[s] g / m)
  // + 1).
  // The grid of a walking kernel, in the order q.heads_inner asks for (set to 0 where the slots
  // do not fit gridDim.y: then one head's tiles run together, the same work in another order).
  const auto walk_grid = [&](int m, Params& q) {
    const int64_t slots = num_tokens * p.group / m + p.num_seqs;
    LLMCORE_CHECK(slots <= 0x7fffffff, "paged_attention: ", slots, " query tiles exceed the grid");
    if (slots > 65535) q.heads_inner = 0;
    const unsigned s = static_cast<unsigned>(slots), h = static_cast<unsigned>(p.num_kv_heads);
    return q.heads_inner ? dim3(h, s) : dim3(s, h);
  };
  const bool any_long = static_cast<int64_t>(meta.max_query_len) * p.group > kSplitRows;
  const bool any_short = static_cast<int64_t>(meta.min_query_len) * p.group <= kSplitRows;
  if constexpr (kSeparateLongWalk<D>) {
    if (p.long_walk && any_long && !set_kv_maps<T, D>(p)) p.long_walk = 0;
    if (p.long_walk && any_long) {
      const size_t smem = prepare<T, D, false, true>();
      Params lp = p;
      lp.heads_inner = 1;
      const dim3 grid = walk_grid(kLongBlockM, lp);
      launch_with_pdl(PagedAttentionKernel<T, D, false, true>, grid, dim3(CtaShape<false, true>::kThreads),
                      smem, stream, lp);
    }
  }
  if (!p.long_walk || any_short) {
    const size_t smem = prepare<T, D, false, false>();
    Params sp = p;
    sp.heads_inner = !p.long_walk && any_long;  // this kernel has the step's prompt rows too
    const dim3 grid = walk_grid(kBlockM, sp);
    launch_with_pdl(PagedAttentionKernel<T, D, false, false>, grid, dim3(CtaShape<false>::kThreads), smem,
                    stream, sp);
  }
  if (p.max_partitions > 1) {
    const int64_t split_y = static_cast<int64_t>(p.num_kv_heads) * p.split_row_tiles;
    LLMCORE_CHECK(split_y <= 65535, "paged_attention: ", split_y, " split CTAs per partition");
    const size_t split_smem = prepare<T, D, true, false>();
    launch_with_pdl(PagedAttentionKernel<T, D, true, false>,
                    dim3(p.max_partitions, static_cast<unsigned>(split_y), p.num_seqs),
                    dim3(CtaShape<true>::kThreads), split_smem, stream, p);
    launch_with_pdl(PagedAttentionCombineKernel<T, D>, dim3(p.num_seqs, p.num_heads),
                 dim3(std::min(D, kCombineThreads)), 0, stream, p);
  }
}

template <typename T>
void launch_head_dim(const Params& p, int head_dim, int64_t num_tokens,
                     const AttentionMetadata& meta, cudaStream_t stream) {
  switch (head_dim) {
    case 32:
      return launch<T, 32>(p, num_tokens, meta, stream);
    case 64:
      return launch<T, 64>(p, num_tokens, meta, stream);
    case 96:
      return launch<T, 96>(p, num_tokens, meta, stream);
    case 128:
      return launch<T, 128>(p, num_tokens, meta, stream);
    case 256:
      return launch<T, 256>(p, num_tokens, meta, stream);
    default:
      throw_value_error("paged_attention: head_dim ", head_dim,
                        " is not supported (32, 64, 96, 128 or 256)");
  }
}

}  // namespace

size_t paged_attention_workspace_bytes(const AttentionMetadata& meta, const AttnShape& shape) {
  LLMCORE_CHECK(meta.num_seqs >= 0 && meta.max_seq_len >= 0, "attention metadata: num_seqs ",
                meta.num_seqs, ", max_seq_len ", meta.max_seq_len);
  LLMCORE_CHECK(shape.num_heads > 0 && shape.head_dim > 0, "bad attention shape: num_heads ",
                shape.num_heads, ", head_dim ", shape.head_dim);
  const int max_partitions = max_partitions_of(meta);
  if (max_partitions <= 1 || meta.num_seqs == 0) return 0;
  // part_out [S, Hq, P, D] then part_ml [S, Hq, P, 2], float32.
  return static_cast<size_t>(meta.num_seqs) * shape.num_heads * max_partitions *
         (shape.head_dim + 2) * sizeof(float);
}

void paged_attention(Tensor& out, const Tensor& qkv, const Tensor& k_cache, const Tensor& v_cache,
                     const AttentionMetadata& meta, const AttnShape& shape, float scale,
                     int sliding_window, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream) {
  const int num_heads = shape.num_heads, num_kv_heads = shape.num_kv_heads;
  const int head_dim = shape.head_dim;
  LLMCORE_CHECK(num_heads > 0 && num_kv_heads > 0 && head_dim > 0 &&
                    num_heads % num_kv_heads == 0,
                "bad attention shape: num_heads ", num_heads, ", num_kv_heads ", num_kv_heads,
                ", head_dim ", head_dim);
  LLMCORE_CHECK_ARG(head_dim == 32 || head_dim == 64 || head_dim == 96 || head_dim == 128 ||
                        head_dim == 256,
                    "paged_attention: head_dim ", head_dim,
                    " is not supported (32, 64, 96, 128 or 256)");
  LLMCORE_CHECK_ARG(sliding_window >= 0, "sliding_window must be >= 0, got ", sliding_window);
  LLMCORE_CHECK_ARG(std::isfinite(scale), "attention scale must be finite, got ", scale);

  const DType dtype = qkv.dtype();
  LLMCORE_CHECK(dtype == DType::kBF16 || dtype == DType::kF16,
                "paged_attention runs on bfloat16 or float16, got ", dtype_name(dtype));
  LLMCORE_CHECK(qkv.ndim() == 2, "attention qkv must be [T, (Hq + 2 Hkv) * D], got ",
                shape_str(qkv.shape()));
  const int64_t num_tokens = qkv.dim(0);
  check_device_tensor(qkv, "attention qkv", dtype, {num_tokens, shape.qkv_width()});
  check_device_tensor(out, "attention out", dtype,
                      {num_tokens, static_cast<int64_t>(num_heads) * head_dim});
  LLMCORE_CHECK(k_cache.ndim() == 4, "k_cache must be [NB, Hkv, BS, D], got ",
                shape_str(k_cache.shape()));
  const int64_t num_blocks = k_cache.dim(0), block_size = k_cache.dim(2);
  const Shape cache_shape = {num_blocks, num_kv_heads, block_size, head_dim};
  check_device_tensor(k_cache, "k_cache", dtype, cache_shape);
  check_device_tensor(v_cache, "v_cache", dtype, cache_shape);
  LLMCORE_CHECK(block_size > 0 && num_blocks <= 0x7fffffff, "k_cache ",
                shape_str(k_cache.shape()), ": bad block size or block count");

  const int num_seqs = meta.num_seqs;
  LLMCORE_CHECK(num_seqs >= 0 && meta.max_query_len >= 0 && meta.max_seq_len >= 0,
                "attention metadata: num_seqs ", num_seqs, ", max_query_len ",
                meta.max_query_len, ", max_seq_len ", meta.max_seq_len);
  check_device_tensor(meta.query_start_loc, "query_start_loc", DType::kI32, {num_seqs + 1});
  check_device_tensor(meta.seq_lens, "seq_lens", DType::kI32, {num_seqs});
  LLMCORE_CHECK(meta.block_tables.ndim() == 2, "block_tables must be [S, max_blocks], got ",
                shape_str(meta.block_tables.shape()));
  const int64_t max_blocks = meta.block_tables.dim(1);
  check_device_tensor(meta.block_tables, "block_tables", DType::kI32, {num_seqs, max_blocks});
  LLMCORE_CHECK(num_seqs <= 65535, "paged_attention: ", num_seqs,
                " sequences exceed the grid's limit of 65535");
  LLMCORE_CHECK(max_blocks <= 0x7fffffff, "block_tables: ", max_blocks, " blocks per sequence");

  const size_t needed = paged_attention_workspace_bytes(meta, shape);
  LLMCORE_CHECK(workspace_bytes >= needed, "paged_attention workspace holds ", workspace_bytes,
                " bytes, needs ", needed);
  LLMCORE_CHECK(needed == 0 || (workspace != nullptr &&
                                reinterpret_cast<uintptr_t>(workspace) % 16 == 0),
                "paged_attention workspace must be a 16-byte aligned device pointer");
  if (num_tokens == 0 || num_seqs == 0) return;

  Params p{};
  p.out = out.data();
  p.qkv = qkv.data();
  p.k_cache = k_cache.data();
  p.v_cache = v_cache.data();
  p.query_start_loc = meta.query_start_loc.data_as<int32_t>();
  p.seq_lens = meta.seq_lens.data_as<int32_t>();
  p.block_tables = meta.block_tables.data_as<int32_t>();
  p.max_partitions = max_partitions_of(meta);
  const int64_t part_rows = static_cast<int64_t>(num_seqs) * num_heads * p.max_partitions;
  p.part_out = needed > 0 ? static_cast<float*>(workspace) : nullptr;
  p.part_ml = needed > 0 ? p.part_out + part_rows * head_dim : nullptr;
  p.num_tokens = num_tokens;
  p.qkv_width = shape.qkv_width();
  p.num_seqs = num_seqs;
  p.num_heads = num_heads;
  p.num_kv_heads = num_kv_heads;
  p.group = num_heads / num_kv_heads;
  p.split_row_tiles = (p.group + kSplitRows - 1) / kSplitRows;
  p.num_blocks = static_cast<int>(num_blocks);
  p.block_size = static_cast<int>(block_size);
  p.max_blocks_per_seq = static_cast<int>(max_blocks);
  p.sliding_window = sliding_window;
  p.scale_log2 = static_cast<float>(static_cast<double>(scale) * 1.4426950408889634);

  LLMCORE_DISPATCH_HALF(dtype, T, { launch_head_dim<T>(p, head_dim, num_tokens, meta, stream); });
}

}  // namespace llmcore::kernels
