// Row gathers: the embedding lookup and gather_rows (the rows the lm_head needs). Both copy whole
// rows as raw bytes, so one kernel serves every dtype; the widest access unit that divides the row
// and both base addresses is used (16 bytes for any hidden size that is a multiple of 8 halves).
#include <cstdint>

#include "kernels/common/dispatch.cuh"
#include "kernels/common/pdl.cuh"
#include "kernels/common/tensor_checks.h"
#include "kernels/kernels.h"

namespace llmcore::kernels {

namespace {

struct GatherParams {
  void* out;             // [L, row_units] of Unit
  const void* src;       // [num_src, row_units] of Unit
  const int32_t* index;  // [L], each in [0, index_limit)
  int64_t num_src;
  int64_t index_begin;  // src row r holds index index_begin + r; other valid indices give zero rows
  int64_t index_limit;  // indices outside [0, index_limit) are errors
  int64_t row_units;  // row length in Units
  int* error_flags;   // device error word, or null
  int error_bit;      // KernelError bit for an index outside [0, num_src)
};

template <typename Unit>
__device__ __forceinline__ Unit all_ones();
template <typename Unit>
__device__ __forceinline__ Unit all_zeros() {
  return Unit{};
}
template <>
__device__ __forceinline__ uint4 all_zeros<uint4>() {
  return make_uint4(0u, 0u, 0u, 0u);
}

template <>
__device__ __forceinline__ uint4 all_ones<uint4>() {
  return make_uint4(~0u, ~0u, ~0u, ~0u);
}
template <>
__device__ __forceinline__ uint32_t all_ones<uint32_t>() {
  return ~0u;
}
template <>
__device__ __forceinline__ uint16_t all_ones<uint16_t>() {
  return 0xffffu;
}
template <>
__device__ __forceinline__ uint8_t all_ones<uint8_t>() {
  return 0xffu;
}

// One block per output row.
template <typename Unit>
__global__ void GatherRowsKernel(GatherParams p) {
  pdl_launch_dependents();  // the lm_head's decode GEMM may start loading its weights
  const int64_t row = blockIdx.x;
  const int32_t idx = p.index[row];
  Unit* dst = static_cast<Unit*>(p.out) + row * p.row_units;  // [row_units]
  if (idx < 0 || idx >= p.index_limit) {
    // Never read outside the source; make the row NaN (all-ones bits) and report.
    for (int64_t i = threadIdx.x; i < p.row_units; i += blockDim.x) dst[i] = all_ones<Unit>();
    if (threadIdx.x == 0 && p.error_flags != nullptr) atomicOr(p.error_flags, p.error_bit);
    return;
  }
  const int64_t local = idx - p.index_begin;
  if (local < 0 || local >= p.num_src) {  // valid, held by another tensor-parallel rank
    for (int64_t i = threadIdx.x; i < p.row_units; i += blockDim.x) dst[i] = all_zeros<Unit>();
    return;
  }
  const Unit* src = static_cast<const Unit*>(p.src) + local * p.row_units;  // [row_units]
  for (int64_t i = threadIdx.x; i < p.row_units; i += blockDim.x) dst[i] = src[i];
}

template <typename Unit>
void launch_gather(GatherParams p, size_t row_bytes, int64_t num_rows, cudaStream_t stream) {
  p.row_units = static_cast<int64_t>(row_bytes / sizeof(Unit));
  const int threads = util::row_block_threads(p.row_units, 256);
  GatherRowsKernel<Unit><<<util::to_int(num_rows, "gathered rows"), threads, 0, stream>>>(p);
  LLMCORE_CUDA_CHECK_LAUNCH();
}

// Copies rows index[i] - index_begin of src [num_src, row_bytes] into out [num_rows, row_bytes]
// (zero rows for indices in [0, index_limit) outside src's range).
void gather(void* out, const void* src, const int32_t* index, int64_t num_rows, int64_t num_src,
            int64_t index_begin, int64_t index_limit, size_t row_bytes, int* error_flags, int error_bit,
            cudaStream_t stream) {
  if (num_rows == 0 || row_bytes == 0) return;
  GatherParams p{out, src, index, num_src, index_begin, index_limit, 0, error_flags, error_bit};
  auto fits = [&](size_t unit) {
    return row_bytes % unit == 0 && util::is_aligned(out, unit) && util::is_aligned(src, unit);
  };
  if (fits(16)) {
    launch_gather<uint4>(p, row_bytes, num_rows, stream);
  } else if (fits(4)) {
    launch_gather<uint32_t>(p, row_bytes, num_rows, stream);
  } else if (fits(2)) {
    launch_gather<uint16_t>(p, row_bytes, num_rows, stream);
  } else {
    launch_gather<uint8_t>(p, row_bytes, num_rows, stream);
  }
}

}  // namespace

void embedding(Tensor& out, const Tensor& token_ids, const Tensor& table, int64_t vocab_start,
               int64_t vocab_size, int* error_flags, cudaStream_t stream) {
  util::check_cuda_matrix(table, "embedding table");
  const int64_t rows = table.dim(0), hidden = table.dim(1);
  LLMCORE_CHECK(vocab_start >= 0 && vocab_size >= 0 && vocab_size <= INT32_MAX, "embedding vocab_start ",
                vocab_start, ", vocab_size ", vocab_size);
  LLMCORE_CHECK(token_ids.ndim() == 1, "token_ids must be 1-D, got ", shape_str(token_ids.shape()));
  const int64_t num_tokens = token_ids.dim(0);
  util::check_cuda(token_ids, "token_ids", DType::kI32, {num_tokens});
  util::check_cuda(out, "embedding out", table.dtype(), {num_tokens, hidden});
  gather(out.data(), table.data(), token_ids.data_as<int32_t>(), num_tokens, rows, vocab_start, vocab_size,
         static_cast<size_t>(hidden) * dtype_size(table.dtype()), error_flags, kErrTokenId, stream);
}

void gather_rows(Tensor& out, const Tensor& x, const Tensor& indices, int* error_flags,
                 cudaStream_t stream) {
  util::check_cuda_matrix(x, "gather_rows x");
  LLMCORE_CHECK(indices.ndim() == 1, "gather_rows indices must be 1-D, got ",
                shape_str(indices.shape()));
  const int64_t num_rows = indices.dim(0);
  util::check_cuda(indices, "gather_rows indices", DType::kI32, {num_rows});
  util::check_cuda(out, "gather_rows out", x.dtype(), {num_rows, x.dim(1)});
  LLMCORE_CHECK(out.data() != x.data() || num_rows == 0 || x.dim(1) == 0,
                "gather_rows: out must not alias x");
  gather(out.data(), x.data(), indices.data_as<int32_t>(), num_rows, x.dim(0), 0, x.dim(0),
         static_cast<size_t>(x.dim(1)) * dtype_size(x.dtype()), error_flags, kErrGatherIndex,
         stream);
}

}  // namespace llmcore::kernels
