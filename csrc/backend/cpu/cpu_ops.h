// The CPU reference ops behind CpuBackend (cpu_backend.cpp). Each op validates its arguments,
// then runs on `num_threads` OpenMP threads (a `num_threads` clause, never global state).
// Activations, weights and the KV cache are float32; indices are int32. Every op computes each
// output element in a fixed order that does not depend on the thread count or on the other
// rows of the batch, so results are bit-identical across batch compositions.
#pragma once

#include <utility>
#include <vector>

#include "backend/backend.h"

namespace llmcore::cpu {

// Throws RuntimeError naming `what` unless `t` lives on the CPU with this dtype and shape.
inline void check_cpu(const Tensor& t, const char* what, DType dtype, const Shape& shape) {
  LLMCORE_CHECK(t.device() == Device::kCPU, what, " must be on the cpu, got ",
                device_name(t.device()));
  t.check(what, dtype, shape);
}

// Throws RuntimeError naming `what` unless `t` is a 2-D float32 CPU tensor.
inline void check_cpu_matrix(const Tensor& t, const char* what) {
  LLMCORE_CHECK(t.device() == Device::kCPU, what, " must be on the cpu, got ",
                device_name(t.device()));
  LLMCORE_CHECK(t.ndim() == 2 && t.dtype() == DType::kF32, what,
                ": expected a 2-D float32 tensor, got ", dtype_name(t.dtype()), " ",
                shape_str(t.shape()));
}

// Throws RuntimeError unless the head counts are positive and Hkv divides Hq.
inline void check_attn_shape(const AttnShape& shape) {
  LLMCORE_CHECK(shape.num_heads > 0 && shape.num_kv_heads > 0 && shape.head_dim > 0 &&
                    shape.num_heads % shape.num_kv_heads == 0,
                "bad attention shape: num_heads ", shape.num_heads, ", num_kv_heads ",
                shape.num_kv_heads, ", head_dim ", shape.head_dim);
}

// Throws RuntimeError unless k_cache and v_cache are float32 CPU [NB, Hkv, BS, D] tensors of one
// shape matching `shape`.
inline void check_kv_cache_layer(const Tensor& k_cache, const Tensor& v_cache,
                                 const AttnShape& shape) {
  LLMCORE_CHECK(k_cache.ndim() == 4, "k_cache must be [NB, Hkv, BS, D], got ",
                shape_str(k_cache.shape()));
  const Shape expected = {k_cache.dim(0), shape.num_kv_heads, k_cache.dim(2), shape.head_dim};
  check_cpu(k_cache, "k_cache", DType::kF32, expected);
  check_cpu(v_cache, "v_cache", DType::kF32, expected);
  LLMCORE_CHECK(k_cache.dim(2) > 0, "k_cache block size must be positive");
}

// --- cpu_elementwise.cpp: row-wise ops -------------------------------------------------------

// out [T, Hd] = table [V, Hd] rows picked by token_ids [T] int32.
void embedding(Tensor& out, const Tensor& token_ids, const Tensor& table, int64_t vocab_start, int64_t vocab_size,
               int num_threads);
// out [T, Hd] = x / rms(x) * weight [Hd]; out may alias x.
void rms_norm(Tensor& out, const Tensor& x, const Tensor& weight, float eps, int num_threads);
// residual [T, Hd] += x [T, Hd]; x = rms_norm(residual) * weight [Hd].
void add_rms_norm(Tensor& x, Tensor& residual, const Tensor& weight, float eps, int num_threads);
// out [T, I] = silu(x[:, :I]) * x[:, I:], x [T, 2I].
void silu_and_mul(Tensor& out, const Tensor& x, int num_threads);
// out [L, N] = x [T, N] rows picked by indices [L] int32.
void gather_rows(Tensor& out, const Tensor& x, const Tensor& indices, int num_threads);

// --- cpu_linear.cpp ----------------------------------------------------------------------------

// out [T, N] = x [T, K] @ weight [N, K]^T (+ bias [N]); batch invariant (see cpu_linear.cpp).
void linear(Tensor& out, const Tensor& x, const Tensor& weight, const Tensor* bias,
            int num_threads);

// --- cpu_attention.cpp: rotary embedding and paged attention -----------------------------------

// Rotates the Hq query heads and Hkv key heads of qkv [T, (Hq + 2 Hkv) * D] in place (NeoX
// halves), at positions [T] int32, with cos_sin [max_pos, D] (cos for D/2 freqs, then sin).
void rotary_embedding(Tensor& qkv, const Tensor& positions, const Tensor& cos_sin,
                      const AttnShape& shape, int num_threads);
// out [T, Hq * D]: causal attention of the q part of qkv over the paged caches
// [NB, Hkv, BS, D]; sliding_window 0 means full attention.
void paged_attention(Tensor& out, const Tensor& qkv, const Tensor& k_cache, const Tensor& v_cache,
                     const AttentionMetadata& meta, const AttnShape& shape, float scale,
                     int sliding_window, int num_threads);

// --- cpu_kv_cache.cpp: cache writes and block copies -------------------------------------------

// Writes the k and v parts of qkv [T, (Hq + 2 Hkv) * D] to slots [T] int32 (negative: skip)
// of k_cache, v_cache [NB, Hkv, BS, D].
void write_kv_cache(const Tensor& qkv, Tensor& k_cache, Tensor& v_cache, const Tensor& slot_mapping,
                    const AttnShape& shape, int num_threads);
// For each (src, dst) pair in order, copies block src to block dst in every layer's k and v.
void copy_kv_blocks(KVCache& cache, const std::vector<std::pair<int, int>>& src_dst,
                    int num_threads);

}  // namespace llmcore::cpu
