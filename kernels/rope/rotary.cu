// Rotary position embedding on the fused qkv rows, NeoX layout: element i of a head pairs with
// element i + D/2. The cos/sin table is the CPU backend's: float32 [max_pos, D] holding cos for
// the D/2 frequencies, then sin. Math in fp32, one rounding to the activation dtype per output.
#include <cmath>

#include "kernels/common/dispatch.cuh"
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
};

// One block per token; thread t handles `kVec` consecutive pair indices of one head at a time.
template <typename T, int kVec>
__global__ void RotaryKernel(RotaryParams<T> p) {
  const int64_t token = blockIdx.x;
  const int half = p.head_dim / 2;
  const int vecs_per_head = half / kVec;
  const int num_items = p.num_rotated * vecs_per_head;
  T* row = p.qkv + token * p.width;  // [width]
  const int pos = p.positions[token];
  if (pos < 0 || pos >= p.max_pos) {
    // Never read outside the table; poison the q and k heads and report.
    const T nan = from_float<T>(NAN);
    for (int i = threadIdx.x; i < p.num_rotated * p.head_dim; i += blockDim.x) row[i] = nan;
    if (threadIdx.x == 0 && p.error_flags != nullptr) atomicOr(p.error_flags, kErrPosition);
    return;
  }
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

}  // namespace

void rotary_embedding(Tensor& qkv, const Tensor& positions, const Tensor& cos_sin,
                      const AttnShape& shape, int* error_flags, cudaStream_t stream) {
  util::check_attn_shape(shape);
  const int head_dim = shape.head_dim;
  LLMCORE_CHECK(head_dim % 2 == 0, "rotary_embedding needs an even head_dim, got ", head_dim);
  util::check_cuda_matrix(qkv, "rotary qkv");
  util::check_half(qkv.dtype(), "rotary qkv");
  const int64_t num_tokens = qkv.dim(0);
  util::check_cuda(qkv, "rotary qkv", qkv.dtype(), {num_tokens, shape.qkv_width()});
  util::check_cuda(positions, "positions", DType::kI32, {num_tokens});
  util::check_cuda_matrix(cos_sin, "cos_sin");
  const int max_pos = util::to_int(cos_sin.dim(0), "rotary table rows");
  util::check_cuda(cos_sin, "cos_sin", DType::kF32, {max_pos, head_dim});
  if (num_tokens == 0) return;

  const int grid = util::to_int(num_tokens, "rotary rows");
  const int num_rotated = shape.num_heads + shape.num_kv_heads;
  const int half = head_dim / 2;
  LLMCORE_DISPATCH_HALF(qkv.dtype(), T, {
    RotaryParams<T> p{qkv.data_as<T>(),
                      positions.data_as<int32_t>(),
                      cos_sin.data_as<float>(),
                      shape.qkv_width(),
                      num_rotated,
                      head_dim,
                      max_pos,
                      error_flags};
    // 16-byte accesses when each half-head is a whole number of 8-element vectors.
    if (half % 8 == 0 && util::is_aligned(qkv.data(), 16)) {
      const int threads = util::row_block_threads(int64_t{num_rotated} * (half / 8), 256);
      RotaryKernel<T, 8><<<grid, threads, 0, stream>>>(p);
    } else {
      const int threads = util::row_block_threads(int64_t{num_rotated} * half, 256);
      RotaryKernel<T, 1><<<grid, threads, 0, stream>>>(p);
    }
    LLMCORE_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace llmcore::kernels
