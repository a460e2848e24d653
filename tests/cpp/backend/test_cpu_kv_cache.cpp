// CPU write_kv_cache (slot -> block/offset in [NB, Hkv, BS, D], negative slots skipped) and
// copy_kv_blocks (every layer's k and v, other blocks untouched).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "backend/backend_test_util.h"

namespace llmcore {
namespace {

using testing::clone;
using testing::f32;
using testing::int_tensor;
using testing::poisoned_f32;
using testing::random_f32;

TEST(CpuWriteKvCache, WritesKAndVToTheirSlots) {
  auto be = create_cpu_backend(2);
  std::mt19937 rng(21);
  const AttnShape shape{6, 2, 32};  // Hq 6, Hkv 2, D 32
  const int num_blocks = 5, block_size = 16, width = shape.qkv_width();
  // Slots in different blocks and offsets, out of order; -1 rows are padding.
  const std::vector<int32_t> slots = {17, 3, -1, 79, 40, 64, -1, 15};
  const int num_tokens = static_cast<int>(slots.size());
  const Tensor qkv = random_f32({num_tokens, width}, rng);
  Tensor k_cache = poisoned_f32({num_blocks, 2, block_size, 32});
  Tensor v_cache = poisoned_f32({num_blocks, 2, block_size, 32});
  be->write_kv_cache(qkv, k_cache, v_cache, int_tensor(slots), shape);

  std::vector<bool> written(num_blocks * block_size, false);
  for (int t = 0; t < num_tokens; ++t) {
    if (slots[t] < 0) continue;
    written[slots[t]] = true;
    const int block = slots[t] / block_size, offset = slots[t] % block_size;
    for (int h = 0; h < 2; ++h)
      for (int i = 0; i < 32; ++i) {
        const int64_t at = ((int64_t{block} * 2 + h) * block_size + offset) * 32 + i;
        // q heads occupy the first 6 * 32 columns, then the 2 k heads, then the 2 v heads.
        EXPECT_EQ(f32(k_cache)[at], f32(qkv)[t * width + (6 + h) * 32 + i]);
        EXPECT_EQ(f32(v_cache)[at], f32(qkv)[t * width + (8 + h) * 32 + i]);
      }
  }
  for (int s = 0; s < num_blocks * block_size; ++s) {
    if (written[s]) continue;
    const int block = s / block_size, offset = s % block_size;
    for (int h = 0; h < 2; ++h) {
      const int64_t at = ((int64_t{block} * 2 + h) * block_size + offset) * 32;
      ASSERT_TRUE(std::isnan(f32(k_cache)[at]) && std::isnan(f32(v_cache)[at])) << "slot " << s;
    }
  }
}

TEST(CpuWriteKvCache, RejectsBadArguments) {
  auto be = create_cpu_backend(1);
  std::mt19937 rng(22);
  const AttnShape shape{2, 1, 8};
  const Tensor qkv = random_f32({2, shape.qkv_width()}, rng);
  Tensor k_cache = poisoned_f32({2, 1, 4, 8}), v_cache = poisoned_f32({2, 1, 4, 8});
  EXPECT_THROW(be->write_kv_cache(qkv, k_cache, v_cache, int_tensor({0, 8}), shape), Error);
  EXPECT_THROW(be->write_kv_cache(qkv, k_cache, v_cache, int_tensor({0}), shape), Error);
  Tensor wrong_heads = poisoned_f32({2, 2, 4, 8});
  EXPECT_THROW(be->write_kv_cache(qkv, wrong_heads, v_cache, int_tensor({0, 1}), shape), Error);
  EXPECT_THROW(be->write_kv_cache(qkv, k_cache, v_cache, int_tensor({0, 1}), {2, 1, 4}), Error);
}

TEST(CpuCopyKvBlocks, CopiesEveryLayerKAndV) {
  auto be = create_cpu_backend(2);
  std::mt19937 rng(23);
  const int num_layers = 3, num_blocks = 6, block_size = 16;
  KVCache cache;
  cache.num_blocks = num_blocks;
  cache.block_size = block_size;
  for (int l = 0; l < num_layers; ++l) {
    cache.k.push_back(random_f32({num_blocks, 2, block_size, 8}, rng));
    cache.v.push_back(random_f32({num_blocks, 2, block_size, 8}, rng));
  }
  std::vector<Tensor> k_before, v_before;
  for (int l = 0; l < num_layers; ++l) {
    k_before.push_back(clone(cache.k[l]));
    v_before.push_back(clone(cache.v[l]));
  }
  // Copy-on-write style pairs: one source may feed several destinations; no destination is
  // also a source.
  be->copy_kv_blocks(cache, {{1, 5}, {4, 3}, {1, 2}});
  const int block_elems = 2 * block_size * 8;
  // Expected source block of each destination block after the copies.
  const std::vector<int> source_of = {0, 1, 1, 4, 4, 1};
  for (int l = 0; l < num_layers; ++l)
    for (int b = 0; b < num_blocks; ++b) {
      const size_t bytes = block_elems * sizeof(float);
      EXPECT_EQ(std::memcmp(f32(cache.k[l]) + b * block_elems,
                            f32(k_before[l]) + source_of[b] * block_elems, bytes),
                0)
          << "layer " << l << " k block " << b;
      EXPECT_EQ(std::memcmp(f32(cache.v[l]) + b * block_elems,
                            f32(v_before[l]) + source_of[b] * block_elems, bytes),
                0)
          << "layer " << l << " v block " << b;
    }
  EXPECT_THROW(be->copy_kv_blocks(cache, {{0, num_blocks}}), Error);
  EXPECT_THROW(be->copy_kv_blocks(cache, {{-1, 0}}), Error);
  cache.v.pop_back();
  EXPECT_THROW(be->copy_kv_blocks(cache, {{0, 1}}), Error);
}

}  // namespace
}  // namespace llmcore
