// The attention kernels' shared-memory tile layout (TileShape in
// kernels/attention/paged_attention_tile.cuh), checked on the host: every (row, chunk) has its own
// place, the loaders' writes are free of bank conflicts (swizzled layout), the ldmatrix addresses
// of the mma.sync path deliver exactly the mma.m16n8k16 fragments (PTX ISA layouts) of Q, K and
// V, and the warpgroup MMA's descriptors (128-byte swizzle, PTX ISA canonical layouts) address
// exactly the operands of each k-step. ldmatrix and the descriptors are emulated from their PTX
// definitions, so this needs no GPU.
#include <gtest/gtest.h>

#include <cstdint>
#include <set>
#include <utility>
#include <vector>

#include "kernels/attention/paged_attention_tile.cuh"

namespace llmcore {
namespace {

using kernels::attention_detail::TileShape;

// A tile of `rows` x D elements stored by off(); each element holds its logical (row, col).
template <int D, bool kSwizzle>
std::vector<std::pair<int, int>> stored_tile(int rows) {
  using Shape = TileShape<D, kSwizzle>;
  std::vector<std::pair<int, int>> smem(static_cast<size_t>(Shape::tile_elems(rows)), {-1, -1});
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < D; ++c) smem[static_cast<size_t>(Shape::off(r, c / 8) + c % 8)] = {r, c};
  return smem;
}

using Pair =
    std::pair<std::pair<int, int>, std::pair<int, int>>;  // two 16-bit elements of a register

// ldmatrix.x4 (PTX): lane l gives the address of row l % 8 of matrix l / 8; register j of lane l
// receives elements 2 (l % 4), 2 (l % 4) + 1 of row l / 4 of matrix j, or with .trans, rows
// 2 (l % 4), 2 (l % 4) + 1 of column l / 4.
std::vector<std::vector<Pair>> ldmatrix_x4(const std::vector<std::pair<int, int>>& smem,
                                           const int (&addr)[32], bool trans) {
  std::vector<std::vector<Pair>> reg(32, std::vector<Pair>(4));
  for (int l = 0; l < 32; ++l)
    for (int j = 0; j < 4; ++j) {
      if (!trans) {
        const int base = addr[8 * j + l / 4];
        reg[l][j] = {smem[base + 2 * (l % 4)], smem[base + 2 * (l % 4) + 1]};
      } else {
        reg[l][j] = {smem[addr[8 * j + 2 * (l % 4)] + l / 4],
                     smem[addr[8 * j + 2 * (l % 4) + 1] + l / 4]};
      }
    }
  return reg;
}

template <int D, bool kSwizzle>
void check_tile_layout() {
  using Shape = TileShape<D, kSwizzle>;
  constexpr int kN = Shape::kBlockN;
  // Every (row, chunk) has its own 16-byte place inside the tile. The loaders copy chunks in
  // row-major order, 16 bytes per thread: in the swizzled layout each 8 consecutive chunks (one
  // shared-memory wavefront of a warp's copies) land in 8 distinct bank groups. Swizzled tiles
  // are whole 64-row slabs.
  for (int rows : kSwizzle ? std::vector<int>{64, 128} : std::vector<int>{16, 64}) {
    std::set<int> places;
    for (int i = 0; i < rows * Shape::kChunks; ++i) {
      const int r = i / Shape::kChunks, c = i % Shape::kChunks, at = Shape::off(r, c);
      ASSERT_TRUE(at % 8 == 0 && at >= 0 && at + 8 <= Shape::tile_elems(rows))
          << "D " << D << " chunk " << i;
      places.insert(at);
    }
    ASSERT_EQ(places.size(), static_cast<size_t>(rows) * Shape::kChunks) << "D " << D;
    if (Shape::kSwizzled)
      for (int i0 = 0; i0 < rows * Shape::kChunks; i0 += 8) {
        std::set<int> banks;
        for (int i = i0; i < i0 + 8; ++i)
          banks.insert(Shape::off(i / Shape::kChunks, i % Shape::kChunks) / 8 % 8);
        ASSERT_EQ(banks.size(), 8u) << "D " << D << " chunks " << i0 << "..";
      }
  }

  // The ldmatrix fragments of a warp's 16 Q rows: the first 16 rows of a tile.
  const auto q_s = stored_tile<D, kSwizzle>(kSwizzle ? 64 : 16),
             kv_s = stored_tile<D, kSwizzle>(kN);
  for (int kd = 0; kd < D / 16; ++kd) {
    int addr[32];
    for (int l = 0; l < 32; ++l) addr[l] = Shape::q_frag(l, kd);
    const auto a = ldmatrix_x4(q_s, addr, false);
    for (int l = 0; l < 32;
         ++l) {  // A[16 x 16] of k-step kd: a0 (g, 2q), a1 (g + 8, 2q), a2 (g, 2q + 8), a3
      const int g = l / 4, q = l % 4, k0 = kd * 16 + 2 * q;
      const Pair want[4] = {{{g, k0}, {g, k0 + 1}},
                            {{g + 8, k0}, {g + 8, k0 + 1}},
                            {{g, k0 + 8}, {g, k0 + 9}},
                            {{g + 8, k0 + 8}, {g + 8, k0 + 9}}};
      for (int j = 0; j < 4; ++j)
        ASSERT_EQ(a[l][j], want[j]) << "Q D " << D << " kd " << kd << " lane " << l;
    }
    for (int nt = 0; nt < kN / 8; nt += 2) {
      for (int l = 0; l < 32; ++l) addr[l] = Shape::k_frag(l, nt, kd);
      const auto b = ldmatrix_x4(kv_s, addr, false);
      for (int l = 0; l < 32;
           ++l) {  // B[k = d][n = key]: b0 (k 2q, 2q + 1; n g), b1 (k + 8) per n-tile
        const int g = l / 4, q = l % 4, k0 = kd * 16 + 2 * q;
        for (int t = 0; t < 2; ++t) {
          const int key = (nt + t) * 8 + g;
          ASSERT_EQ(b[l][2 * t], Pair({key, k0}, {key, k0 + 1})) << "K D " << D << " lane " << l;
          ASSERT_EQ(b[l][2 * t + 1], Pair({key, k0 + 8}, {key, k0 + 9}))
              << "K D " << D << " lane " << l;
        }
      }
    }
  }
  for (int kk = 0; kk < kN / 16; ++kk)
    for (int dt = 0; dt < D / 8; dt += 2) {
      int addr[32];
      for (int l = 0; l < 32; ++l) addr[l] = Shape::v_frag(l, kk, dt);
      const auto b = ldmatrix_x4(kv_s, addr, true);
      for (int l = 0; l < 32; ++l) {  // B[k = key][n = d]: b0 (keys 2q, 2q + 1; d g), b1 (keys + 8)
        const int g = l / 4, q = l % 4, key0 = kk * 16 + 2 * q;
        for (int t = 0; t < 2; ++t) {
          const int d = (dt + t) * 8 + g;
          ASSERT_EQ(b[l][2 * t], Pair({key0, d}, {key0 + 1, d})) << "V D " << D << " lane " << l;
          ASSERT_EQ(b[l][2 * t + 1], Pair({key0 + 8, d}, {key0 + 9, d}))
              << "V D " << D << " lane " << l;
        }
      }
    }
}

// The byte address the warpgroup MMA reads for element (i, j) of an operand given by a 128-byte
// swizzle descriptor, from the PTX ISA canonical layouts in 16-byte units T = 8 elements:
//   K-major  ((8,m),(T,2k)) : ((8T,SBO),(1,T))        i = row (m), j = column (k)
//   MN-major ((T,8,m),(8,k)) : ((1,T,LBO),(8T,SBO))   i = column (n), j = row (k)
// then Swizzle<3,4,3>: address bits 4-6 ^= bits 7-9 (tiles start 1024-byte aligned, at 0 here;
// `start` includes the slab's offset).
int sw128_address(bool k_major, int start, int lbo, int sbo, int i, int j) {
  int a;
  if (k_major)
    a = start + (i % 8) * 128 + (i / 8) * sbo + (j % 8) * 2 + (j / 8) * 16;
  else
    a = start + (i % 8) * 2 + ((i / 8) % 8) * 16 + (i / 64) * lbo + (j % 8) * 128 + (j / 8) * sbo;
  return a ^ (((a >> 7) & 7) << 4);
}

TEST(CudaAttentionLayout, WarpgroupDescriptorsAddressTheOperands) {
  using Shape = TileShape<128, true>;
  // The long CTA's Q tile: 128 rows, warpgroup w's 64 rows from Shape::off(64 w, 0).
  const auto q_s = stored_tile<128, true>(128), kv_s = stored_tile<128, true>(Shape::kBlockN);
  // Scores, k-step kd: A = Q [64 rows][16 columns 16 kd ..], B = K [64 keys][the same columns].
  for (int w = 0; w < 2; ++w)
    for (int kd = 0; kd < 128 / 16; ++kd)
      for (int i = 0; i < 64; ++i)
        for (int j = 0; j < 16; ++j) {
          const int a =
              sw128_address(true, Shape::kstep_bytes(kd), 16, Shape::kRowGroupBytes, i, j);
          const int qa = 2 * Shape::off(64 * w, 0) + a;
          ASSERT_EQ(a % 2, 0);
          ASSERT_EQ(q_s[qa / 2], std::make_pair(64 * w + i, kd * 16 + j))
              << "Q warpgroup " << w << " kd " << kd << " (" << i << ", " << j << ")";
          if (w == 0)
            ASSERT_EQ(kv_s[a / 2], std::make_pair(i, kd * 16 + j))
                << "K kd " << kd << " (" << i << ", " << j << ")";
        }
  // P V, keys 16 kk ..: B = V [16 keys (k)][128 head-dim columns (n)].
  for (int kk = 0; kk < Shape::kBlockN / 16; ++kk)
    for (int n = 0; n < 128; ++n)
      for (int k = 0; k < 16; ++k) {
        const int a = sw128_address(false, Shape::key_step_bytes(kk), Shape::kColBlockBytes,
                                    Shape::kRowGroupBytes, n, k);
        ASSERT_EQ(kv_s[a / 2], std::make_pair(kk * 16 + k, n))
            << "V kk " << kk << " (" << n << ", " << k << ")";
      }
}

// The long kernel's K/V copies: per key segment (seg_rows keys of one cache block) and column
// block cb, one TMA copy of a [seg_rows, 64] box with 128-byte swizzle to the tile's byte offset
// cb * kColBlockBytes + 128 * first key. Such a copy puts box element (r, c) at its row-major
// address with bits 4-6 ^= bits 7-9 (the swizzle applies to the shared-memory address itself),
// which must be where off() keeps (key, cb * 64 + c).
TEST(CudaAttentionLayout, TmaBoxesFillTheSwizzledTile) {
  using Shape = TileShape<128, true>;
  for (int seg_rows : {8, 16, 32, 64})
    for (int key0 = 0; key0 < Shape::kBlockN; key0 += seg_rows)
      for (int cb = 0; cb < Shape::kColBlocks; ++cb)
        for (int r = 0; r < seg_rows; ++r)
          for (int c = 0; c < 64; ++c) {
            int a = cb * Shape::kColBlockBytes + 128 * key0 + r * 128 + c * 2;
            a ^= ((a >> 7) & 7) << 4;
            const int key = key0 + r, col = cb * 64 + c;
            ASSERT_EQ(a, 2 * (Shape::off(key, col / 8) + col % 8))
                << "segment of " << seg_rows << " keys at " << key0 << ", (" << r << ", " << c
                << ")";
          }
}

TEST(CudaAttentionLayout, LoadersAndFragmentAddressesMatchTheMmaLayouts) {
  check_tile_layout<32, false>();
  check_tile_layout<64, false>();
  check_tile_layout<96, false>();
  check_tile_layout<128, false>();
  check_tile_layout<256, false>();
  check_tile_layout<64, true>();
  check_tile_layout<128, true>();
}

}  // namespace
}  // namespace llmcore
