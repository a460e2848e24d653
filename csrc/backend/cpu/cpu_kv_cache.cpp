// Paged KV cache writes and block copies. Cache layout per layer: [NB, Hkv, BS, D]; a cache
// slot is block * BS + offset.
#include <cstring>

#include "backend/cpu/cpu_ops.h"

namespace llmcore::cpu {

void write_kv_cache(const Tensor& qkv, Tensor& k_cache, Tensor& v_cache, const Tensor& slot_mapping,
                    const AttnShape& shape, int num_threads) {
  check_attn_shape(shape);
  check_kv_cache_layer(k_cache, v_cache, shape);
  check_cpu_matrix(qkv, "write_kv_cache qkv");
  const int64_t num_tokens = qkv.dim(0);
  check_cpu(qkv, "write_kv_cache qkv", DType::kF32, {num_tokens, shape.qkv_width()});
  check_cpu(slot_mapping, "slot_mapping", DType::kI32, {num_tokens});
  const int64_t num_blocks = k_cache.dim(0), block_size = k_cache.dim(2);
  const int32_t* slots = slot_mapping.data_as<int32_t>();  // [T], negative = not cached
  for (int64_t t = 0; t < num_tokens; ++t)
    LLMCORE_CHECK(slots[t] < num_blocks * block_size, "slot_mapping[", t, "] = ", slots[t],
                  " is outside the cache's ", num_blocks * block_size, " slots");

  const int num_kv_heads = shape.num_kv_heads, head_dim = shape.head_dim;
  const int64_t qkv_width = shape.qkv_width();
  const int64_t k_offset = int64_t{shape.num_heads} * head_dim;  // k heads follow the q heads
  const int64_t v_offset = k_offset + int64_t{num_kv_heads} * head_dim;
  const size_t head_bytes = static_cast<size_t>(head_dim) * sizeof(float);
  const float* rows = qkv.data_as<float>();  // [T, (Hq + 2 Hkv) * D]
  float* k_all = k_cache.data_as<float>();   // [NB, Hkv, BS, D]
  float* v_all = v_cache.data_as<float>();   // [NB, Hkv, BS, D]
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t t = 0; t < num_tokens; ++t) {
    if (slots[t] < 0) continue;
    const int64_t block = slots[t] / block_size, offset = slots[t] % block_size;
    for (int h = 0; h < num_kv_heads; ++h) {
      const int64_t cache_at = ((block * num_kv_heads + h) * block_size + offset) * head_dim;
      const float* row = rows + t * qkv_width + int64_t{h} * head_dim;
      std::memcpy(k_all + cache_at, row + k_offset, head_bytes);
      std::memcpy(v_all + cache_at, row + v_offset, head_bytes);
    }
  }
}

void copy_kv_blocks(KVCache& cache, const std::vector<std::pair<int, int>>& src_dst,
                    int num_threads) {
  std::vector<Tensor*> layers = kv_copy_layers(cache, src_dst, Device::kCPU);
  if (src_dst.empty() || layers.empty()) return;

  const size_t block_bytes = layers[0]->nbytes() / static_cast<size_t>(cache.num_blocks);
  const int64_t num_layers = static_cast<int64_t>(layers.size());
  // Pairs run in the given order within a tensor, so a chain (a -> b, b -> c) behaves as written.
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t l = 0; l < num_layers; ++l) {
    char* base = static_cast<char*>(layers[l]->data());
    for (const auto& [src, dst] : src_dst)
      if (src != dst) std::memcpy(base + dst * block_bytes, base + src * block_bytes, block_bytes);
  }
}

}  // namespace llmcore::cpu
