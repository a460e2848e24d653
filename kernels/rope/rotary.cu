// Rotary position embedding on the fused qkv rows, NeoX layout: element i of a head pairs with
// element i + D/2. The cos/sin table is the CPU backend's: float32 [max_pos, D] holding cos for
// the D/2 frequencies, then sin. Math in fp32, one rounding to the activation dtype per output.
// rotary_embedding_and_write_kv also writes the rotated k heads and the v heads to the KV cache
// from the same kernel (what write_kv_cache does after rotary_embedding, one launch instead of two
// per layer).
#include <cmath>

#include "kernels/common/dispatch.cuh"
#include "kernels/common/pdl.cuh"
#include "kernels/common/tensor_checks.h"
#include "kernels/common/vec.cuh"
#include "kernels/kernels.h"

namespace llmcore::kernels {

namespace {

template <typename T>
struct RotaryParams {
  T* qkv;                    // [T, width]: q heads, k heads, v heads, each D wide
  const int32_t* positions;  // [T]
  const float* cos_sin;      // [max_pos, D]: cos[D/2] then sin[D/2]
  int64_t width;             // (Hq + 2 Hkv) * D
  int num_rotated;           // Hq + Hkv: the q and k heads at the start of the row
  int head_dim;              // D
  int max_pos;
  int* error_flags;  // device error word, or null
  // The KV-cache write (kWriteKv), as write_kv_cache (cache/kv_cache.cu).
  T* k_cache;            // [NB, Hkv, BS, D]
  T* v_cache;            // [NB, Hkv, BS, D]
  const int32_t* slots;  // [T]; negative = do not cache this token
  int64_t num_slots;     // NB * BS
  int num_heads;         // Hq: the k heads follow the Hq q heads
  int block_size;        // BS
};

// One block per token; thread t handles `kVec` consecutive pair indices of one head at a time.
// kWriteKv: then (after a barrier, so every k element is rotated) the k and v heads go to the
// token's cache slot.
template <typename T, int kVec, bool kWriteKv>
__global__ void RotaryKernel(RotaryParams<T> p) {
  pdl_launch_dependents();  // attention may start reading its metadata (common/pdl.cuh)
  const int64_t token = blockIdx.x;
  const int half = p.head_dim / 2;
  const int vecs_per_head = half / kVec;
  const int num_items = p.num_rotated * vecs_per_head;
  T* row = p.qkv + token * p.width;  // [width]
  const int pos = p.positions[token];
  pdl_wait();  // qkv comes from the kernel before
  if (pos < 0 || pos >= p.max_pos) {
    // Never read outside the table; poison the q and k heads and report.
    const T nan = from_float<T>(NAN);
    for (int i = threadIdx.x; i < p.num_rotated * p.head_dim; i += blockDim.x) row[i] = nan;
    if (threadIdx.x == 0 && p.error_flags != nullptr) atomicOr(p.error_flags, kErrPosition);
  } else {
    const float* cos = p.cos_sin + static_cast<int64_t>(pos) * p.head_dim;  // [D/2]
    const float* sin = cos + half;                                          // [D/2]
    for (int item = threadIdx.x; item < num_items; item += blockDim.x) {
      const int head = item / vecs_per_head;
      const int i = (item - head * vecs_per_head) * kVec;    // first pair index of this vector
      T* x = row + static_cast<int64_t>(head) * p.head_dim;  // [D]
      Vec<T, kVec> lo = load_vec<T, kVec>(x + i);
      Vec<T, kVec> hi = load_vec<T, kVec>(x + half + i);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const float x1 = to_float(lo.v[j]), x2 = to_float(hi.v[j]);
        const float c = cos[i + j], s = sin[i + j];
        lo.v[j] = from_float<T>(x1 * c - x2 * s);
        hi.v[j] = from_float<T>(x2 * c + x1 * s);
      }
      store_vec<T, kVec>(x + i, lo);
      store_vec<T, kVec>(x + half + i, hi);
    }
  }
  if constexpr (kWriteKv) {
    const int64_t slot = p.slots[token];
    if (slot < 0) return;
    if (slot >= p.num_slots) {
      if (threadIdx.x == 0 && p.error_flags != nullptr) atomicOr(p.error_flags, kErrSlot);
      return;
    }
    __syncthreads();  // the k heads are rotated (or poisoned) by all threads of the block
    const int64_t block = slot / p.block_size, offset = slot % p.block_size;
    const int num_kv_heads = p.num_rotated - p.num_heads;
    const T* k_src = row + static_cast<int64_t>(p.num_heads) * p.head_dim;   // [Hkv * D]
    const T* v_src = k_src + static_cast<int64_t>(num_kv_heads) * p.head_dim;  // [Hkv * D]
    const int num_vecs = num_kv_heads * p.head_dim / kVec;
    for (int i = threadIdx.x; i < num_vecs; i += blockDim.x) {
      const int e = i * kVec;
      const int head = e / p.head_dim, d = e - head * p.head_dim;
      const int64_t at = ((block * num_kv_heads + head) * p.block_size + offset) * p.head_dim + d;
      store_vec<T, kVec>(p.k_cache + at, load_vec<T, kVec>(k_src + e));
      store_vec<T, kVec>(p.v_cache + at, load_vec<T, kVec>(v_src + e));
    }
  }
}

// Checks the rotary arguments; returns max_pos.
int check_rotary(const Tensor& qkv, const Tensor& positions, const Tensor& cos_sin, const AttnShape& shape) {
  util::check_attn_shape(shape);
  LLMCORE_CHECK(shape.head_dim % 2 == 0, "rotary_embedding needs an even head_dim, got ", shape.head_dim);
  util::check_cuda_matrix(qkv, "rotary qkv");
  util::check_half(qkv.dtype(), "rotary qkv");
  const int64_t num_tokens = qkv.dim(0);
  util::check_cuda(qkv, "rotary qkv", qkv.dtype(), {num_tokens, shape.qkv_width()});
  util::check_cuda(positions, "positions", DType::kI32, {num_tokens});
  util::check_cuda_matrix(cos_sin, "cos_sin");
  const int max_pos = util::to_int(cos_sin.dim(0), "rotary table rows");
  util::check_cuda(cos_sin, "cos_sin", DType::kF32, {max_pos, shape.head_dim});
  return max_pos;
}

// Launches the rotary kernel, with the KV-cache write when k_cache is given (then block_size too).
void launch_rotary(Tensor& qkv, const Tensor& positions, const Tensor& cos_sin, const AttnShape& shape, int max_pos,
                   Tensor* k_cache, Tensor* v_cache, const Tensor* slot_mapping, int block_size, int* error_flags,
                   cudaStream_t stream) {
  const int64_t num_tokens = qkv.dim(0);
  if (num_tokens == 0) return;
  const int grid = util::to_int(num_tokens, "rotary rows");
  const int num_rotated = shape.num_heads + shape.num_kv_heads;
  const int head_dim = shape.head_dim, half = head_dim / 2;
  LLMCORE_DISPATCH_HALF(qkv.dtype(), T, {
    RotaryParams<T> p{};
    p.qkv = qkv.data_as<T>();
    p.positions = positions.data_as<int32_t>();
    p.cos_sin = cos_sin.data_as<float>();
    p.width = shape.qkv_width();
    p.num_rotated = num_rotated;
    p.head_dim = head_dim;
    p.max_pos = max_pos;
    p.error_flags = error_flags;
    p.num_heads = shape.num_heads;
    const bool write_kv = k_cache != nullptr;
    if (write_kv) {
      p.k_cache = k_cache->data_as<T>();
      p.v_cache = v_cache->data_as<T>();
      p.slots = slot_mapping->data_as<int32_t>();
      p.num_slots = k_cache->dim(0) * block_size;
      p.block_size = block_size;
    }
    // 16-byte accesses when each half-head is a whole number of 8-element vectors.
    const bool vec8 = half % 8 == 0 && util::is_aligned(qkv.data(), 16) &&
                      (!write_kv || (util::is_aligned(k_cache->data(), 16) && util::is_aligned(v_cache->data(), 16)));
    const int64_t units = int64_t{num_rotated} * (vec8 ? half / 8 : half);
    const int threads = util::row_block_threads(units, 256);
    if (vec8) {
      if (write_kv) launch_with_pdl(RotaryKernel<T, 8, true>, dim3(grid), dim3(threads), 0, stream, p);
      else launch_with_pdl(RotaryKernel<T, 8, false>, dim3(grid), dim3(threads), 0, stream, p);
    } else {
      if (write_kv) launch_with_pdl(RotaryKernel<T, 1, true>, dim3(grid), dim3(threads), 0, stream, p);
      else launch_with_pdl(RotaryKernel<T, 1, false>, dim3(grid), dim3(threads), 0, stream, p);
    }
  });
}

}  // namespace

void rotary_embedding(Tensor& qkv, const Tensor& positions, const Tensor& cos_sin,
                      const AttnShape& shape, int* error_flags, cudaStream_t stream) {
  const int max_pos = check_rotary(qkv, positions, cos_sin, shape);
  launch_rotary(qkv, positions, cos_sin, shape, max_pos, nullptr, nullptr, nullptr, 0, error_flags, stream);
}

void rotary_embedding_and_write_kv(Tensor& qkv, const Tensor& positions, const Tensor& cos_sin, Tensor& k_cache,
                                   Tensor& v_cache, const Tensor& slot_mapping, const AttnShape& shape,
                                   int* error_flags, cudaStream_t stream) {
  const int max_pos = check_rotary(qkv, positions, cos_sin, shape);
  const int block_size = util::check_kv_cache_write(qkv, k_cache, v_cache, slot_mapping, shape);
  launch_rotary(qkv, positions, cos_sin, shape, max_pos, &k_cache, &v_cache, &slot_mapping, block_size, error_flags,
                stream);
}

}  // namespace llmcore::kernels
