// The CUDA backend's paged KV cache writes and block copies against the CPU backend, bitwise:
// both only move values, so the caches must agree exactly, including the untouched slots. The fused
// rotary + cache write against the two ops it replaces, bitwise.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cuda_test_util.h"

namespace llmcore {
namespace {

using namespace cuda_testing;

// `n` distinct slots in [0, num_slots), every third one replaced by -1 (not cached).
std::vector<int32_t> random_slots(int64_t n, int64_t num_slots, std::mt19937& rng) {
  std::vector<int32_t> all(static_cast<size_t>(num_slots));
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  std::vector<int32_t> slots(all.begin(), all.begin() + n);
  for (size_t i = 2; i < slots.size(); i += 3) slots[i] = -1;
  return slots;
}

TEST(CudaKvCache, WriteKvCacheMatchesCpuBitwise) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  auto cpu = create_cpu_backend(0);
  std::mt19937 rng(201);
  const AttnShape shapes[] = {{4, 2, 64}, {2, 1, 6}, {8, 8, 128}};
  for (DType dt : {DType::kBF16, DType::kF16}) {
    auto be = make_backend(dt);
    for (const AttnShape& shape : shapes) {
      for (int64_t block_size : {16, 5}) {
        for (int64_t tokens : {1, 7, 64}) {
          const int64_t num_blocks = 20;
          const Shape cache_shape = {num_blocks, shape.num_kv_heads, block_size, shape.head_dim};
          const Tensor qkv = random_rounded({tokens, shape.qkv_width()}, dt, rng);
          const Tensor slots = int_tensor(random_slots(tokens, num_blocks * block_size, rng));
          // Caches start with random contents, the same on both sides.
          Tensor k_cpu = random_rounded(cache_shape, dt, rng);
          Tensor v_cpu = random_rounded(cache_shape, dt, rng);
          Tensor k_dev = upload_as(*be, k_cpu, dt), v_dev = upload_as(*be, v_cpu, dt);
          cpu->write_kv_cache(qkv, k_cpu, v_cpu, slots, shape);
          be->write_kv_cache(upload_as(*be, qkv, dt), k_dev, v_dev, upload(*be, slots), shape);
          EXPECT_TRUE(same_bits(download(*be, k_dev), to_host_dtype(k_cpu, dt)))
              << short_name(dt) << " D " << shape.head_dim << " BS " << block_size << " T "
              << tokens;
          EXPECT_TRUE(same_bits(download(*be, v_dev), to_host_dtype(v_cpu, dt)));
        }
      }
    }
    // A slot past the end of the cache is reported at the next sync.
    const AttnShape shape{2, 1, 8};
    Tensor k = be->empty({2, 1, 4, 8}, dt), v = be->empty({2, 1, 4, 8}, dt);
    be->write_kv_cache(be->empty({1, shape.qkv_width()}, dt), k, v, upload(*be, int_tensor({8})),
                       shape);
    EXPECT_THROW(be->synchronize(), Error);
  }
}

// Runs `pairs` on CPU and GPU caches that start equal; expects equal caches afterwards.
void expect_copy_blocks_match(Backend& cpu, Backend& be, DType dt, int num_layers,
                              const Shape& layer_shape,
                              const std::vector<std::pair<int, int>>& pairs, std::mt19937& rng) {
  KVCache host, dev;
  host.num_blocks = dev.num_blocks = static_cast<int>(layer_shape[0]);
  host.block_size = dev.block_size = static_cast<int>(layer_shape[2]);
  for (int l = 0; l < num_layers; ++l) {
    host.k.push_back(random_rounded(layer_shape, dt, rng));
    host.v.push_back(random_rounded(layer_shape, dt, rng));
    dev.k.push_back(upload_as(be, host.k.back(), dt));
    dev.v.push_back(upload_as(be, host.v.back(), dt));
  }
  cpu.copy_kv_blocks(host, pairs);
  be.copy_kv_blocks(dev, pairs);
  for (int l = 0; l < num_layers; ++l) {
    ASSERT_TRUE(same_bits(download(be, dev.k[l]), to_host_dtype(host.k[l], dt)))
        << "layer " << l << " k, " << pairs.size() << " pairs, shape " << shape_str(layer_shape);
    ASSERT_TRUE(same_bits(download(be, dev.v[l]), to_host_dtype(host.v[l], dt)))
        << "layer " << l << " v";
  }
}

TEST(CudaKvCache, CopyKvBlocksAppliesPairsInListOrder) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  auto cpu = create_cpu_backend(0);
  std::mt19937 rng(202);
  for (DType dt : {DType::kBF16, DType::kF16}) {
    auto be = make_backend(dt);
    const Shape shape = {12, 2, 4, 8};  // [NB, Hkv, BS, D]
    // Independent pairs (one launch), a chain, a swap-like cycle, two writes to one block, a
    // no-op pair.
    expect_copy_blocks_match(*cpu, *be, dt, 3, shape, {{0, 5}, {1, 6}, {2, 7}}, rng);
    expect_copy_blocks_match(*cpu, *be, dt, 3, shape, {{0, 1}, {1, 2}, {2, 3}}, rng);
    expect_copy_blocks_match(*cpu, *be, dt, 3, shape, {{3, 4}, {4, 3}}, rng);
    expect_copy_blocks_match(*cpu, *be, dt, 3, shape, {{1, 9}, {2, 9}, {9, 10}}, rng);
    expect_copy_blocks_match(*cpu, *be, dt, 3, shape, {{5, 5}, {6, 0}}, rng);
    expect_copy_blocks_match(*cpu, *be, dt, 3, shape, {}, rng);
    // Odd block bytes (narrower access units) and more layers than one launch takes.
    expect_copy_blocks_match(*cpu, *be, dt, 70, {6, 1, 1, 3}, {{0, 1}, {2, 3}, {1, 4}}, rng);
    // More pairs than one launch takes.
    std::vector<std::pair<int, int>> many;
    for (int i = 0; i < 300; ++i) many.emplace_back(i, 300 + i);
    expect_copy_blocks_match(*cpu, *be, dt, 2, {600, 1, 2, 8}, many, rng);
    // Out-of-range pairs are refused before anything runs.
    KVCache dev;
    dev.num_blocks = 4;
    dev.block_size = 2;
    dev.k.push_back(be->empty({4, 1, 2, 8}, dt));
    dev.v.push_back(be->empty({4, 1, 2, 8}, dt));
    EXPECT_THROW(be->copy_kv_blocks(dev, {{0, 4}}), Error);
    EXPECT_THROW(be->copy_kv_blocks(dev, {{-1, 0}}), Error);
  }
}

// rotary_embedding_and_write_kv is rotary_embedding then write_kv_cache, bit for bit: qkv and both
// caches, skipped slots (-1), a position outside the table (its q and k poisoned, the NaN k cached
// as the two ops do), head dims with and without 16-byte vectors.
TEST(CudaKvCache, FusedRotaryAndWriteIsRotaryThenWrite) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  std::mt19937 rng(205);
  const AttnShape shapes[] = {{4, 2, 64}, {2, 1, 6}, {32, 8, 128}};
  for (DType dt : {DType::kBF16, DType::kF16}) {
    auto be = make_backend(dt);
    for (const AttnShape& shape : shapes) {
      const int64_t max_pos = 300, block_size = 16, num_blocks = 20, tokens = 37;
      const Shape cache_shape = {num_blocks, shape.num_kv_heads, block_size, shape.head_dim};
      const Tensor cos_sin = upload(*be, random_rounded({max_pos, shape.head_dim}, DType::kF32, rng));
      std::vector<int32_t> pos(static_cast<size_t>(tokens));
      std::uniform_int_distribution<int32_t> pick(0, max_pos - 1);
      for (auto& p : pos) p = pick(rng);
      pos[5] = static_cast<int32_t>(max_pos);  // outside the table
      const Tensor positions = upload(*be, int_tensor(pos));
      const Tensor slots = upload(*be, int_tensor(random_slots(tokens, num_blocks * block_size, rng)));
      const Tensor qkv_host = random_rounded({tokens, shape.qkv_width()}, dt, rng);
      const Tensor k_host = random_rounded(cache_shape, dt, rng), v_host = random_rounded(cache_shape, dt, rng);

      Tensor qkv_a = upload_as(*be, qkv_host, dt), k_a = upload_as(*be, k_host, dt), v_a = upload_as(*be, v_host, dt);
      be->rotary_embedding(qkv_a, positions, cos_sin, shape);
      be->write_kv_cache(qkv_a, k_a, v_a, slots, shape);
      EXPECT_THROW(be->synchronize(), Error);  // the position outside the table
      Tensor qkv_b = upload_as(*be, qkv_host, dt), k_b = upload_as(*be, k_host, dt), v_b = upload_as(*be, v_host, dt);
      be->rotary_embedding_and_write_kv(qkv_b, positions, cos_sin, k_b, v_b, slots, shape);
      EXPECT_THROW(be->synchronize(), Error);
      const std::string what = std::string(short_name(dt)) + " D " + std::to_string(shape.head_dim);
      EXPECT_TRUE(same_bits(download(*be, qkv_b), download(*be, qkv_a))) << what;
      EXPECT_TRUE(same_bits(download(*be, k_b), download(*be, k_a))) << what;
      EXPECT_TRUE(same_bits(download(*be, v_b), download(*be, v_a))) << what;
    }
    // A slot past the end of the cache is reported at the next sync.
    const AttnShape shape{2, 1, 8};
    Tensor k = be->empty({2, 1, 4, 8}, dt), v = be->empty({2, 1, 4, 8}, dt);
    Tensor qkv = be->empty({1, shape.qkv_width()}, dt);
    be->rotary_embedding_and_write_kv(qkv, upload(*be, int_tensor({0})),
                                      upload(*be, random_rounded({4, 8}, DType::kF32, rng)), k, v,
                                      upload(*be, int_tensor({8})), shape);
    EXPECT_THROW(be->synchronize(), Error);
  }
}

}  // namespace
}  // namespace llmcore
