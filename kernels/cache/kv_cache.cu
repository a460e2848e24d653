// Paged KV cache writes and block copies. Cache layout per layer: [NB, Hkv, BS, D]; a cache slot
// is block * BS + offset.
#include <algorithm>
#include <cstdint>
#include <unordered_set>

#include "kernels/common/dispatch.cuh"
#include "kernels/common/tensor_checks.h"
#include "kernels/common/vec.cuh"
#include "kernels/kernels.h"

namespace llmcore::kernels {

namespace {

// ---- write_kv_cache -----------------------------------------------------------------------------

template <typename T>
struct WriteKvParams {
  const T* qkv;          // [T, width]: q heads, then Hkv k heads, then Hkv v heads
  T* k_cache;            // [NB, Hkv, BS, D]
  T* v_cache;            // [NB, Hkv, BS, D]
  const int32_t* slots;  // [T]; negative = do not cache this token
  int64_t width;         // (Hq + 2 Hkv) * D
  int64_t k_offset;      // Hq * D: where the k heads start in a row
  int64_t num_slots;     // NB * BS
  int num_kv_heads;      // Hkv
  int head_dim;          // D
  int block_size;        // BS
  int* error_flags;      // device error word, or null
};

// One block per token; each thread moves kVec elements of k and of v at a time.
template <typename T, int kVec>
__global__ void WriteKvCacheKernel(WriteKvParams<T> p) {
  const int64_t token = blockIdx.x;
  const int64_t slot = p.slots[token];
  if (slot < 0) return;
  if (slot >= p.num_slots) {
    if (threadIdx.x == 0 && p.error_flags != nullptr) atomicOr(p.error_flags, kErrSlot);
    return;
  }
  const int64_t block = slot / p.block_size, offset = slot % p.block_size;
  const T* k_src = p.qkv + token * p.width + p.k_offset;                       // [Hkv * D]
  const T* v_src = k_src + static_cast<int64_t>(p.num_kv_heads) * p.head_dim;  // [Hkv * D]
  const int num_vecs = p.num_kv_heads * p.head_dim / kVec;
  for (int i = threadIdx.x; i < num_vecs; i += blockDim.x) {
    const int e = i * kVec;
    const int head = e / p.head_dim, d = e - head * p.head_dim;
    const int64_t at = ((block * p.num_kv_heads + head) * p.block_size + offset) * p.head_dim + d;
    store_vec<T, kVec>(p.k_cache + at, load_vec<T, kVec>(k_src + e));
    store_vec<T, kVec>(p.v_cache + at, load_vec<T, kVec>(v_src + e));
  }
}

// ---- copy_kv_blocks -----------------------------------------------------------------------------

// Kernel parameters stay under the classic 4 KB limit; more layers or pairs take more launches.
constexpr int kMaxLayersPerLaunch = 128;
constexpr int kMaxPairsPerLaunch = 256;

struct CopyBlocksParams {
  void* layers[kMaxLayersPerLaunch];  // each [NB, block_units] of Unit
  int32_t src[kMaxPairsPerLaunch];    // block to read, per pair
  int32_t dst[kMaxPairsPerLaunch];    // block to write, per pair
  int64_t block_units;                // one block of one layer, in Units
};

// grid (pairs, layers): one block copies one cache block of one layer. Pairs of one launch are
// independent (see group_pairs), so their order inside the launch does not matter.
template <typename Unit>
__global__ void CopyBlocksKernel(const __grid_constant__ CopyBlocksParams p) {
  Unit* base = static_cast<Unit*>(p.layers[blockIdx.y]);
  const Unit* from = base + p.src[blockIdx.x] * p.block_units;  // [block_units]
  Unit* to = base + p.dst[blockIdx.x] * p.block_units;          // [block_units]
  for (int64_t i = threadIdx.x; i < p.block_units; i += blockDim.x) to[i] = from[i];
}

// Splits the pairs, in order, into runs that may each run as one launch: a pair joins the current
// run unless it reads a block the run writes, or writes a block the run reads or writes. Pairs
// with src == dst copy nothing and are dropped.
std::vector<std::vector<std::pair<int, int>>> group_pairs(
    const std::vector<std::pair<int, int>>& src_dst) {
  std::vector<std::vector<std::pair<int, int>>> groups;
  std::unordered_set<int> reads, writes;
  for (const auto& [src, dst] : src_dst) {
    if (src == dst) continue;
    const bool conflict = writes.count(src) || reads.count(dst) || writes.count(dst);
    if (groups.empty() || conflict || groups.back().size() == kMaxPairsPerLaunch) {
      groups.emplace_back();
      reads.clear();
      writes.clear();
    }
    groups.back().emplace_back(src, dst);
    reads.insert(src);
    writes.insert(dst);
  }
  return groups;
}

template <typename Unit>
void launch_copy_blocks(const std::vector<Tensor*>& layers,
                        const std::vector<std::vector<std::pair<int, int>>>& groups,
                        size_t block_bytes, cudaStream_t stream) {
  CopyBlocksParams p{};
  p.block_units = static_cast<int64_t>(block_bytes / sizeof(Unit));
  const int threads = util::row_block_threads(p.block_units, 256);
  for (const auto& group : groups) {
    for (size_t i = 0; i < group.size(); ++i) {
      p.src[i] = group[i].first;
      p.dst[i] = group[i].second;
    }
    for (size_t l0 = 0; l0 < layers.size(); l0 += kMaxLayersPerLaunch) {
      const size_t num_layers = std::min<size_t>(kMaxLayersPerLaunch, layers.size() - l0);
      for (size_t l = 0; l < num_layers; ++l) p.layers[l] = layers[l0 + l]->data();
      const dim3 grid(static_cast<unsigned>(group.size()), static_cast<unsigned>(num_layers));
      CopyBlocksKernel<Unit><<<grid, threads, 0, stream>>>(p);
      LLMCORE_CUDA_CHECK_LAUNCH();
    }
  }
}

}  // namespace

void write_kv_cache(const Tensor& qkv, Tensor& k_cache, Tensor& v_cache, const Tensor& slot_mapping,
                    const AttnShape& shape, int* error_flags, cudaStream_t stream) {
  const int block_size = util::check_kv_cache_write(qkv, k_cache, v_cache, slot_mapping, shape);
  const int64_t num_tokens = qkv.dim(0);
  if (num_tokens == 0) return;

  const int grid = util::to_int(num_tokens, "write_kv_cache rows");
  LLMCORE_DISPATCH_HALF(qkv.dtype(), T, {
    WriteKvParams<T> p{qkv.data_as<T>(),
                       k_cache.data_as<T>(),
                       v_cache.data_as<T>(),
                       slot_mapping.data_as<int32_t>(),
                       shape.qkv_width(),
                       int64_t{shape.num_heads} * shape.head_dim,
                       k_cache.dim(0) * block_size,
                       shape.num_kv_heads,
                       shape.head_dim,
                       block_size,
                       error_flags};
    // 16-byte accesses when every head is a whole number of 8-element vectors.
    const bool vec8 = shape.head_dim % 8 == 0 && util::is_aligned(qkv.data(), 16) &&
                      util::is_aligned(k_cache.data(), 16) && util::is_aligned(v_cache.data(), 16);
    const int64_t elements = int64_t{shape.num_kv_heads} * shape.head_dim;
    if (vec8) {
      WriteKvCacheKernel<T, 8><<<grid, util::row_block_threads(elements / 8, 256), 0, stream>>>(p);
    } else {
      WriteKvCacheKernel<T, 1><<<grid, util::row_block_threads(elements, 256), 0, stream>>>(p);
    }
    LLMCORE_CUDA_CHECK_LAUNCH();
  });
}

void copy_kv_blocks(const std::vector<Tensor*>& layers,
                    const std::vector<std::pair<int, int>>& src_dst, cudaStream_t stream) {
  if (layers.empty()) return;
  const Tensor& first = *layers[0];
  LLMCORE_CHECK(first.ndim() >= 1 && first.dim(0) > 0, "copy_kv_blocks: layer 0 is ",
                shape_str(first.shape()), ", expected [NB, ...] with NB > 0");
  const int64_t num_blocks = first.dim(0);
  for (size_t l = 0; l < layers.size(); ++l)
    util::check_cuda(*layers[l], "copy_kv_blocks layer", first.dtype(), first.shape());
  for (const auto& [src, dst] : src_dst)
    LLMCORE_CHECK(src >= 0 && src < num_blocks && dst >= 0 && dst < num_blocks,
                  "copy_kv_blocks pair (", src, ", ", dst, ") is outside [0, ", num_blocks, ")");
  const auto groups = group_pairs(src_dst);
  const size_t block_bytes = first.nbytes() / static_cast<size_t>(num_blocks);
  if (groups.empty() || block_bytes == 0) return;

  auto fits = [&](size_t unit) {
    if (block_bytes % unit != 0) return false;
    for (const Tensor* t : layers)
      if (!util::is_aligned(t->data(), unit)) return false;
    return true;
  };
  if (fits(16)) {
    launch_copy_blocks<uint4>(layers, groups, block_bytes, stream);
  } else if (fits(4)) {
    launch_copy_blocks<uint32_t>(layers, groups, block_bytes, stream);
  } else if (fits(2)) {
    launch_copy_blocks<uint16_t>(layers, groups, block_bytes, stream);
  } else {
    launch_copy_blocks<uint8_t>(layers, groups, block_bytes, stream);
  }
}

}  // namespace llmcore::kernels
