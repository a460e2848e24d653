// Host launchers of llmcore's CUDA kernels: plain functions over Tensors and a stream, no
// templates (the dispatch from runtime dtype to compile-time types happens in the .cu files).
// Every launcher has a CPU twin in csrc/backend/cpu and a GoogleTest comparing the two.
//
// Conventions: tensors are contiguous GPU tensors; activations are bf16 or fp16 and every kernel
// does its math in fp32. Launchers check device, dtype and shape on the host and throw
// RuntimeError on a mismatch; they enqueue on `stream` and return without waiting. Index tensors
// (token ids, positions, slots, row indices) live on the GPU, so their range is checked by the
// kernels: a bad index is never dereferenced, the affected output is filled with NaN (all-ones
// bits), and a KernelError bit is OR-ed into `*error_flags` (a device int; may be null), which
// the backend reads back at its next synchronization and turns into an exception.
#pragma once

#include <cuda_runtime.h>

#include <utility>
#include <vector>

#include "attention/attention.h"
#include "sampling/sample_rows.h"
#include "core/tensor.h"

namespace llmcore::kernels {

// Bits of the device error word (see above).
enum KernelError : int {
  kErrTokenId = 1 << 0,      // embedding: token id outside [0, V)
  kErrGatherIndex = 1 << 1,  // gather_rows: index outside [0, T)
  kErrPosition = 1 << 2,     // rotary_embedding: position outside [0, max_pos)
  kErrSlot = 1 << 3,         // write_kv_cache: slot >= NB * BS
};

// What one KernelError bit means, e.g. "embedding: token id outside the vocabulary".
const char* kernel_error_name(int bit);

// --- embedding/embedding.cu: row gathers -------------------------------------------------------

// out [T, Hd] = table [Vr, Hd] rows picked by token_ids [T] int32 minus vocab_start; ids in
// [0, vocab_size) outside the table's range give zero rows (backend.h). out and table share a dtype.
void embedding(Tensor& out, const Tensor& token_ids, const Tensor& table, int64_t vocab_start,
               int64_t vocab_size, int* error_flags, cudaStream_t stream);
// out [L, N] = x [T, N] rows picked by indices [L] int32; any dtype.
void gather_rows(Tensor& out, const Tensor& x, const Tensor& indices, int* error_flags,
                 cudaStream_t stream);

// --- norm/rms_norm.cu ----------------------------------------------------------------------------

// out [T, Hd] = x / rms(x) * weight [Hd], per row; out may alias x.
void rms_norm(Tensor& out, const Tensor& x, const Tensor& weight, float eps, cudaStream_t stream);
// residual [T, Hd] += x [T, Hd] (stored in the activation dtype); x = rms_norm(residual) * weight.
void add_rms_norm(Tensor& x, Tensor& residual, const Tensor& weight, float eps,
                  cudaStream_t stream);

// --- rope/rotary.cu ------------------------------------------------------------------------------

// Rotates the Hq query and Hkv key heads of qkv [T, (Hq + 2 Hkv) * D] in place (NeoX halves), at
// positions [T] int32, with cos_sin [max_pos, D] float32 (cos for D/2 freqs, then sin).
void rotary_embedding(Tensor& qkv, const Tensor& positions, const Tensor& cos_sin,
                      const AttnShape& shape, int* error_flags, cudaStream_t stream);
// rotary_embedding then write_kv_cache (cache/kv_cache.cu) in one kernel, the same bits.
void rotary_embedding_and_write_kv(Tensor& qkv, const Tensor& positions, const Tensor& cos_sin, Tensor& k_cache,
                                   Tensor& v_cache, const Tensor& slot_mapping, const AttnShape& shape,
                                   int* error_flags, cudaStream_t stream);

// --- activation/silu_and_mul.cu ------------------------------------------------------------------

// out [T, I] = silu(x[:, :I]) * x[:, I:], x [T, 2I].
void silu_and_mul(Tensor& out, const Tensor& x, cudaStream_t stream);

// --- common/bias.cu
// --------------------------------------------------------------------------------

// out [T, N] (float32, bf16 or fp16) += bias [N] (same dtype as out, or the 16-bit activation
// dtype when out is float32), in fp32.
void add_bias(Tensor& out, const Tensor& bias, cudaStream_t stream);

// --- linear/skinny_gemm.cu: the decode GEMM ----------------------------------------------------

// How a skinny_gemm launch groups its work: col_tiles groups of 8 tokens and row_tiles groups
// of 16 weight rows per CTA. Speed only: a token's bits are the same with every tiling.
struct SkinnyGemmTiling {
  int col_tiles = 0;  // 0: skinny_gemm_default_tiling(M)
  int row_tiles = 1;
};
// Every tiling the kernel is compiled for, and the one skinny_gemm uses for M rows.
const std::vector<SkinnyGemmTiling>& skinny_gemm_tilings();
SkinnyGemmTiling skinny_gemm_default_tiling(int64_t m);
// Whether skinny_gemm takes this weight: bf16 or fp16 on the GPU, K % 8 == 0, 16-byte aligned. It
// then takes any x of the weight's dtype and K whose base is 16-byte aligned (every row then is).
bool skinny_gemm_supports(const Tensor& weight);
// out [M, N] = x [M, K] @ weight [N, K]^T (+ bias [N], x's dtype), out x's dtype or float32;
// tensor cores, fp32 accumulation in a fixed order, each output depending only on its token row
// and the weight (batch invariant at any M, see the .cu). Faster than cuBLASLt up to 16 rows
// (decode steps of few sequences); prompt rows go through cuBLASLt (backend/cuda/cuda_linear.cpp).
// Launched with programmatic dependent launch (common/pdl.cuh): it reads the weight before the
// previous kernel in the stream has finished, so that kernel must not write the weight.
void skinny_gemm(Tensor& out, const Tensor& x, const Tensor& weight, const Tensor* bias, cudaStream_t stream,
                 SkinnyGemmTiling tiling = {});
// out [M, I] = silu(gate) * up of gate_up = x @ weight^T (+ bias), weight [2I, K] holding the gate
// rows then the up rows (the MLP's fused gate_up_proj): bit for bit skinny_gemm into gate_up followed
// by silu_and_mul, in one launch. tiling.col_tiles as for skinny_gemm (4 runs as 2); each
// CTA takes 16 gate rows and their 16 up rows.
void skinny_gemm_silu_and_mul(Tensor& out, const Tensor& x, const Tensor& weight, const Tensor* bias,
                              cudaStream_t stream, SkinnyGemmTiling tiling = {});

// --- cache/kv_cache.cu ---------------------------------------------------------------------------

// Writes the k and v parts of qkv [T, (Hq + 2 Hkv) * D] to slots [T] int32 (negative: skip) of
// k_cache, v_cache [NB, Hkv, BS, D].
void write_kv_cache(const Tensor& qkv, Tensor& k_cache, Tensor& v_cache, const Tensor& slot_mapping,
                    const AttnShape& shape, int* error_flags, cudaStream_t stream);
// For each (src, dst) pair in list order, copies block src to block dst of every tensor in
// `layers` (each [NB, ...], one shape and dtype). Pairs that neither read what an earlier pair of
// the same launch writes nor write what it reads or writes share one launch; others start a new
// launch, so chains like (a -> b, b -> c) behave as written.
void copy_kv_blocks(const std::vector<Tensor*>& layers,
                    const std::vector<std::pair<int, int>>& src_dst, cudaStream_t stream);

// --- comm/one_shot_all_reduce.cu ------------------------------------------------------------------

constexpr int kOneShotMaxRanks = 8;
constexpr int kOneShotMaxBlocks = 36;  // grid of the two-phase kernel (messages above ll_bytes)
constexpr int kOneShotLLBlocks = 64;   // grid of the LL kernels (messages up to ll_bytes)

// The peer-memory state of one rank of a one-shot all-reduce group (all ranks' pointers are
// device pointers readable and writable from every GPU of the group: peer access is on).
struct OneShotAllReduce {
  int world = 0;
  int rank = 0;
  // Two-phase kernel: each rank copies into its own staging buffer, the ranks meet at a flag
  // barrier, then each reads every staging buffer over NVLink.
  void* buffers[2][kOneShotMaxRanks] = {};  // [phase][rank]: each rank's staging, buffer_bytes each
  uint32_t* flags[kOneShotMaxRanks] = {};   // [rank]: its flags [kOneShotMaxBlocks][kOneShotMaxRanks]
  uint32_t* counters = nullptr;             // this rank's epoch per block [kOneShotMaxBlocks]
  size_t buffer_bytes = 0;
  // LL kernels (NCCL's low-latency protocol): each rank writes its data straight into every
  // peer's receive area as 16-byte lines of 8 data bytes, each 4 data bytes next to the call's
  // epoch, so a reader polls its own memory and needs neither a flag nor a fence.
  void* ll[2][kOneShotMaxRanks] = {};  // [parity][rank]: the rank's receive area, a slot per sender
  size_t ll_slot_bytes = 0;            // one sender's slot: 2 * ll_bytes of lines, a token line per block
  size_t ll_bytes = 0;                 // the largest message the LL kernels take
  uint32_t* ll_counters = nullptr;     // this rank's epoch per block [kOneShotLLBlocks]
  int* error = nullptr;                // mapped host word the host reads: 1 = a peer timed out
  int* failed = nullptr;               // device copy of it, read by every call (no host reads)
  uint64_t timeout_ns = 0;             // a block gives up waiting for a peer after this
};

// x (bf16, fp16 or f32, on this rank's GPU) = the sum over ranks of x, in rank order. Returns
// false (doing nothing) when x does not fit the staging buffers or is not 16-byte sized and
// aligned; the caller then uses another all-reduce.
bool one_shot_all_reduce(Tensor& x, const OneShotAllReduce& params, cudaStream_t stream);

// one_shot_all_reduce(x) followed by add_rms_norm(x, residual, weight, eps), in one kernel and
// with the same bits as the two. Returns false (doing nothing) where the LL kernels cannot take
// it (x larger than ll_bytes, not bf16/fp16, hidden size not a multiple of 8 or above 4096, or a
// tensor not 16-byte aligned); the caller then runs the two.
bool one_shot_all_reduce_add_rms_norm(Tensor& x, Tensor& residual, const Tensor& weight, float eps,
                                      const OneShotAllReduce& params, cudaStream_t stream);

// --- common/fill_dummy.cu ------------------------------------------------------------------------

// out (f32, bf16 or fp16, any shape) = dummy_value(stream, index, bound) per element
// (core/dummy_values.h), rounded to out's dtype: load_format="dummy" weights. Element (r, c) of out
// viewed as [dim 0, cols] draws index first + r * row_stride + c (row_stride < 0: cols).
void fill_dummy(Tensor& out, uint64_t stream, float bound, int64_t first, int64_t row_stride,
                cudaStream_t cuda_stream);

// --- sampling/sampler.cu --------------------------------------------------------------------------

// Samples or scores rows[0, num_rows) (device array) of vocab_size logits each, writing
// results[r] (device array). One block per row; each row's result depends only on its own logits,
// edits and parameters (batch invariance).
void sample_rows(const GpuSampleRow* rows, GpuSampleResult* results, int num_rows, int vocab_size,
                 cudaStream_t stream);

}  // namespace llmcore::kernels
