// Host-side argument checks shared by the kernel launchers: device, dtype and shape of Tensors,
// pointer alignment for vectorized paths, and int ranges for launch dimensions. Plain C++.
#pragma once

#include <climits>
#include <cstddef>
#include <cstdint>

#include "backend/backend.h"
#include "core/tensor.h"

namespace llmcore::kernels::util {

// Throws RuntimeError naming `what` unless `t` lives on the GPU with this dtype and shape.
inline void check_cuda(const Tensor& t, const char* what, DType dtype, const Shape& shape) {
  LLMCORE_CHECK(t.device() == Device::kCUDA, what, " must be on cuda, got ",
                device_name(t.device()));
  t.check(what, dtype, shape);
}

// Throws RuntimeError naming `what` unless `t` is a 2-D GPU tensor.
inline void check_cuda_matrix(const Tensor& t, const char* what) {
  LLMCORE_CHECK(t.device() == Device::kCUDA, what, " must be on cuda, got ",
                device_name(t.device()));
  LLMCORE_CHECK(t.ndim() == 2, what, ": expected a 2-D tensor, got ", dtype_name(t.dtype()), " ",
                shape_str(t.shape()));
}

// Throws RuntimeError unless `dtype` is one of the two 16-bit activation types.
inline void check_half(DType dtype, const char* what) {
  LLMCORE_CHECK(dtype == DType::kBF16 || dtype == DType::kF16, what,
                " must be bfloat16 or float16, got ", dtype_name(dtype));
}

// Throws RuntimeError unless the head counts are positive and Hkv divides Hq.
inline void check_attn_shape(const AttnShape& shape) {
  LLMCORE_CHECK(shape.num_heads > 0 && shape.num_kv_heads > 0 && shape.head_dim > 0 &&
                    shape.num_heads % shape.num_kv_heads == 0,
                "bad attention shape: num_heads ", shape.num_heads, ", num_kv_heads ",
                shape.num_kv_heads, ", head_dim ", shape.head_dim);
}

// `v` as an int for a launch dimension or kernel index; throws RuntimeError naming `what` if it
// does not fit.
inline int to_int(int64_t v, const char* what) {
  LLMCORE_CHECK(v >= 0 && v <= INT_MAX, what, " = ", v, " does not fit the kernel's int range");
  return static_cast<int>(v);
}

inline bool is_aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// Ceil(a / b) for positive b.
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Threads for a one-block-per-row kernel that handles `units` items per row: a multiple of 32,
// at least 32 and at most `max_threads`. Depends only on the row width, never on the row count,
// so a row's reduction order is the same in every batch.
inline int row_block_threads(int64_t units, int max_threads = 1024) {
  const int64_t warps = ceil_div(units < 1 ? 1 : units, 32);
  const int64_t threads = warps * 32;
  return static_cast<int>(threads < max_threads ? threads : max_threads);
}

// The arguments of a KV-cache write of qkv [T, (Hq + 2 Hkv) * D]: slot_mapping [T] int32, k_cache
// and v_cache [NB, Hkv, BS, D] of qkv's dtype, all on the GPU. Returns BS.
inline int check_kv_cache_write(const Tensor& qkv, const Tensor& k_cache, const Tensor& v_cache,
                                const Tensor& slot_mapping, const AttnShape& shape) {
  check_attn_shape(shape);
  check_cuda_matrix(qkv, "write_kv_cache qkv");
  check_half(qkv.dtype(), "write_kv_cache qkv");
  const int64_t num_tokens = qkv.dim(0);
  check_cuda(qkv, "write_kv_cache qkv", qkv.dtype(), {num_tokens, shape.qkv_width()});
  check_cuda(slot_mapping, "slot_mapping", DType::kI32, {num_tokens});
  LLMCORE_CHECK(k_cache.ndim() == 4, "k_cache must be [NB, Hkv, BS, D], got ", shape_str(k_cache.shape()));
  const Shape cache_shape = {k_cache.dim(0), shape.num_kv_heads, k_cache.dim(2), shape.head_dim};
  check_cuda(k_cache, "k_cache", qkv.dtype(), cache_shape);
  check_cuda(v_cache, "v_cache", qkv.dtype(), cache_shape);
  const int block_size = to_int(k_cache.dim(2), "kv cache block size");
  LLMCORE_CHECK(block_size > 0, "k_cache block size must be positive");
  to_int(int64_t{shape.num_kv_heads} * shape.head_dim, "Hkv * D");
  return block_size;
}

}  // namespace llmcore::kernels::util
