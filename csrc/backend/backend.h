// The op interface every backend implements. The CPU backend (backend/cpu) is the readable
// reference with fp32 activations; the CUDA backend (backend/cuda, kernels/) must match it.
//
// Shapes use: T = tokens in the step, Hd = hidden size, V = vocab, I = intermediate size,
// Hq/Hkv = query/KV heads, D = head dim, S = sequences in the step, NB = KV blocks,
// BS = block size. All tensors are row-major and contiguous.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace llmcore {

struct AttnShape {
  int num_heads = 0;     // Hq
  int num_kv_heads = 0;  // Hkv, divides Hq
  int head_dim = 0;      // D
  int qkv_width() const { return (num_heads + 2 * num_kv_heads) * head_dim; }
};

// Which rows of a step are generated tokens rather than prompt tokens. A generated-token row
// feeds back a token the engine sampled (a decode row; also such a token recomputed after a
// preemption); every other row is a prompt token. A row's kind is a property of its token, never
// of the batch, so a backend may compute the two kinds with different kernels (the CUDA backend:
// its decode GEMM for generated rows, cuBLASLt for prompt rows) and stay batch invariant, as long
// as each kind always goes through its own kernel.
struct RowKinds {
  // Sorted, disjoint, non-empty [begin, end) ranges of generated-token rows.
  std::vector<std::pair<int64_t, int64_t>> generated;

  // From per-row flags (true = generated), merging runs.
  static RowKinds from_flags(const std::vector<bool>& generated_row);
  static RowKinds all_generated(int64_t rows) {
    RowKinds k;
    if (rows > 0) k.generated.emplace_back(0, rows);
    return k;
  }
};

inline RowKinds RowKinds::from_flags(const std::vector<bool>& generated_row) {
  RowKinds k;
  const int64_t n = static_cast<int64_t>(generated_row.size());
  for (int64_t i = 0; i < n;) {
    if (!generated_row[static_cast<size_t>(i)]) {
      ++i;
      continue;
    }
    int64_t j = i;
    while (j < n && generated_row[static_cast<size_t>(j)]) ++j;
    k.generated.emplace_back(i, j);
    i = j;
  }
  return k;
}

// Where each sequence's query tokens sit in the batch and where its context lives in the
// paged cache. Query token i (0-based) of sequence s is at position
// seq_lens[s] - query_len(s) + i and attends to keys at positions [0, that position]
// (limited to the last `sliding_window` positions when a window is set).
struct AttentionMetadata {
  int num_seqs = 0;         // S
  int max_query_len = 0;    // max over s of query_start_loc[s+1] - query_start_loc[s] (or more:
                            // an upper bound; the CUDA attention picks its kernels by it)
  int min_query_len = 1;    // a lower bound of those lengths (> 1: no decode row in the step)
  int max_seq_len = 0;      // max over s of seq_lens[s]
  Tensor query_start_loc;   // [S + 1] int32, on the backend's device
  Tensor seq_lens;          // [S] int32, context length including this step's tokens
  Tensor block_tables;      // [S, max_blocks_per_seq] int32, -1 padded
  Tensor slot_mapping;      // [T] int32, cache slot (block * BS + offset) of each new token
};

// Per layer: k[l], v[l] are [NB, Hkv, BS, D] in the backend's activation dtype.
struct KVCache {
  int num_blocks = 0;
  int block_size = 0;
  std::vector<Tensor> k;
  std::vector<Tensor> v;
};

// Checks a copy_kv_blocks request (pairs inside [0, num_blocks); every layer's k and v on
// `device`, [NB, Hkv, BS, D], alike) and returns the layers' tensors as one flat list.
inline std::vector<Tensor*> kv_copy_layers(KVCache& cache, const std::vector<std::pair<int, int>>& src_dst,
                                           Device device) {
  LLMCORE_CHECK(cache.k.size() == cache.v.size(), "kv cache has ", cache.k.size(), " k layers and ",
                cache.v.size(), " v layers");
  for (const auto& [src, dst] : src_dst)
    LLMCORE_CHECK(src >= 0 && src < cache.num_blocks && dst >= 0 && dst < cache.num_blocks,
                  "copy_kv_blocks pair (", src, ", ", dst, ") is outside [0, ", cache.num_blocks, ")");
  std::vector<Tensor*> layers;
  for (size_t l = 0; l < cache.k.size(); ++l) {
    for (Tensor* t : {&cache.k[l], &cache.v[l]}) {
      LLMCORE_CHECK(t->device() == device && t->ndim() == 4 && t->dim(0) == cache.num_blocks &&
                        t->dim(2) == cache.block_size && t->shape() == cache.k[0].shape() &&
                        t->dtype() == cache.k[0].dtype(),
                    "kv cache layer ", l, " is ", device_name(t->device()), " ", dtype_name(t->dtype()), " ",
                    shape_str(t->shape()), ", expected ", device_name(device), " [", cache.num_blocks,
                    ", Hkv, ", cache.block_size, ", D] like layer 0");
      layers.push_back(t);
    }
  }
  return layers;
}

// Element (r, c) of a tensor viewed as [dim 0, numel / dim 0] is element
// first + r * row_stride + c of the tensor it was cut from (row_stride < 0: its own row length,
// i.e. a contiguous range starting at `first`).
struct DummyIndex {
  int64_t first = 0;
  int64_t row_stride = -1;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual Device device() const = 0;
  virtual std::string name() const = 0;
  // dtype of activations, weights and the KV cache (CPU: float32).
  virtual DType activation_dtype() const = 0;

  // Uninitialized memory on the device.
  virtual Tensor empty(Shape shape, DType dtype) = 0;
  // Copies between any two devices; same dtype and number of elements.
  virtual void copy(Tensor& dst, const Tensor& src) = 0;
  // A device copy of a host tensor (a step's inputs). The host tensor may be reused once this
  // returns; the CUDA backend stages it in pinned memory and copies it asynchronously.
  virtual Tensor upload(const Tensor& host) {
    Tensor d = empty(host.shape(), host.dtype());
    copy(d, host);
    return d;
  }
  // Waits for queued work (a no-op on the CPU).
  virtual void synchronize() = 0;
  // A checkpoint tensor (CPU, any float dtype) converted to activation_dtype() on the device.
  virtual Tensor load_weight(const Tensor& host) = 0;

  // out[t] = table[token_ids[t] - vocab_start].  out [T, Hd]; token_ids [T] int32; table [Vr, Hd]
  // holding the ids [vocab_start, vocab_start + Vr) of a vocabulary of vocab_size ids: ids of the
  // vocabulary outside the table's range give zero rows (a vocab-parallel embedding, whose ranks'
  // rows are then summed); ids outside [0, vocab_size) are errors. Unsharded: (0, Vr).
  virtual void embedding(Tensor& out, const Tensor& token_ids, const Tensor& table, int64_t vocab_start,
                         int64_t vocab_size) = 0;
  // out = x / rms(x) * weight, per row.  out, x [T, Hd]; weight [Hd]
  virtual void rms_norm(Tensor& out, const Tensor& x, const Tensor& weight, float eps) = 0;
  // residual += x; x = rms_norm(residual) * weight.  x, residual [T, Hd]; weight [Hd]
  virtual void add_rms_norm(Tensor& x, Tensor& residual, const Tensor& weight, float eps) = 0;
  // out = x @ weight^T (+ bias).  out [T, N]; x [T, K]; weight [N, K]; bias [N] or null.
  // out may be float32 while x and weight are the activation dtype (the lm_head's logits).
  // kinds: which rows are generated tokens (null: none). Each output row depends only on its
  // input row and its kind (batch invariance).
  virtual void linear(Tensor& out, const Tensor& x, const Tensor& weight, const Tensor* bias,
                      const RowKinds* kinds = nullptr) = 0;
  // Rotates the q and k parts of qkv in place (NeoX layout: pairs (i, i + D/2)).
  // qkv [T, (Hq + 2 Hkv) * D]; positions [T] int32; cos_sin [max_pos, D] float32 holding
  // cos for the D/2 frequencies then sin for them.
  virtual void rotary_embedding(Tensor& qkv, const Tensor& positions, const Tensor& cos_sin,
                                const AttnShape& shape) = 0;
  // Writes the k and v parts of qkv into the cache slots.  qkv [T, (Hq + 2 Hkv) * D];
  // k_cache, v_cache [NB, Hkv, BS, D]; slot_mapping [T] int32.
  virtual void write_kv_cache(const Tensor& qkv, Tensor& k_cache, Tensor& v_cache,
                              const Tensor& slot_mapping, const AttnShape& shape) = 0;
  // rotary_embedding() then write_kv_cache(), bit for bit (the CUDA backend: one kernel).
  virtual void rotary_embedding_and_write_kv(Tensor& qkv, const Tensor& positions, const Tensor& cos_sin,
                                             Tensor& k_cache, Tensor& v_cache, const Tensor& slot_mapping,
                                             const AttnShape& shape) {
    rotary_embedding(qkv, positions, cos_sin, shape);
    write_kv_cache(qkv, k_cache, v_cache, slot_mapping, shape);
  }
  // Causal attention of the q part of qkv over the paged cache (which already holds this
  // step's k and v). out [T, Hq * D]; qkv [T, (Hq + 2 Hkv) * D]; caches [NB, Hkv, BS, D].
  // sliding_window 0 means full attention.
  virtual void paged_attention(Tensor& out, const Tensor& qkv, const Tensor& k_cache,
                               const Tensor& v_cache, const AttentionMetadata& meta,
                               const AttnShape& shape, float scale, int sliding_window) = 0;
  // out = silu(x[:, :I]) * x[:, I:].  out [T, I]; x [T, 2I]
  virtual void silu_and_mul(Tensor& out, const Tensor& x) = 0;
  // The MLP's input half: out = silu_and_mul(gate_up) with gate_up = linear(x, weight, bias, kinds),
  // bit for bit. out [T, I]; gate_up [T, 2I] (scratch: rows a backend fuses are left unwritten);
  // x [T, K]; weight [2I, K] (gate rows, then up rows); bias [2I] or null. The CUDA backend fuses
  // both steps into its decode GEMM for generated rows.
  virtual void linear_silu_and_mul(Tensor& out, Tensor& gate_up, const Tensor& x, const Tensor& weight,
                                   const Tensor* bias, const RowKinds* kinds = nullptr) {
    linear(gate_up, x, weight, bias, kinds);
    silu_and_mul(out, gate_up);
  }
  // out[i] = x[indices[i]].  out [L, N]; x [T, N]; indices [L] int32
  virtual void gather_rows(Tensor& out, const Tensor& x, const Tensor& indices) = 0;
  // For each (src, dst) block pair, copies block src to block dst in every layer's k and v.
  virtual void copy_kv_blocks(KVCache& cache, const std::vector<std::pair<int, int>>& src_dst) = 0;
  // out (any shape, in the activation dtype; may be a view into a larger weight) =
  // dummy_value(stream, index, bound) for its elements (core/dummy_values.h), rounded to out's
  // dtype: load_format="dummy" weights drawn where they live. `index` says which element of the
  // whole checkpoint tensor each one is, so a tensor-parallel shard holds its slice of the same
  // numbers.
  virtual void fill_dummy(Tensor& out, uint64_t stream, float bound, const DummyIndex& index) = 0;
};

// The CPU reference backend. `num_threads` 0 means all cores.
std::unique_ptr<Backend> create_cpu_backend(int num_threads = 0);

}  // namespace llmcore
