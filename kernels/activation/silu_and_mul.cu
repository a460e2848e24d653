// SwiGLU's gate: out = silu(gate) * up on the fused gate_up rows (the element's arithmetic is in
// silu.cuh, shared with the decode GEMM's fused epilogue).
#include "kernels/activation/silu.cuh"
#include "kernels/common/dispatch.cuh"
#include "kernels/common/pdl.cuh"
#include "kernels/common/tensor_checks.h"
#include "kernels/common/vec.cuh"
#include "kernels/kernels.h"

namespace llmcore::kernels {

namespace {

template <typename T>
struct SiluAndMulParams {
  T* out;         // [T, I]
  const T* x;     // [T, 2I]: gate [I] then up [I]
  int64_t inter;  // I
};

// One block per row.
template <typename T, int kVec>
__global__ void SiluAndMulKernel(SiluAndMulParams<T> p) {
  pdl_launch_dependents();  // the down GEMM may start loading its weights (common/pdl.cuh)
  const int64_t row = blockIdx.x;
  const T* gate = p.x + row * 2 * p.inter;  // [I]
  const T* up = gate + p.inter;             // [I]
  T* out = p.out + row * p.inter;           // [I]
  const int64_t num_vecs = p.inter / kVec;
  for (int64_t i = threadIdx.x; i < num_vecs; i += blockDim.x) {
    const Vec<T, kVec> g = load_vec<T, kVec>(gate + i * kVec);
    const Vec<T, kVec> u = load_vec<T, kVec>(up + i * kVec);
    Vec<T, kVec> o;
#pragma unroll
    for (int j = 0; j < kVec; ++j) o.v[j] = silu_times<T>(to_float(g.v[j]), to_float(u.v[j]));
    store_vec<T, kVec>(out + i * kVec, o);
  }
}

}  // namespace

void silu_and_mul(Tensor& out, const Tensor& x, cudaStream_t stream) {
  util::check_cuda_matrix(x, "silu_and_mul x");
  util::check_half(x.dtype(), "silu_and_mul x");
  const int64_t num_tokens = x.dim(0);
  LLMCORE_CHECK(x.dim(1) % 2 == 0, "silu_and_mul x must have an even width, got ",
                shape_str(x.shape()));
  const int64_t inter = x.dim(1) / 2;
  util::check_cuda(out, "silu_and_mul out", x.dtype(), {num_tokens, inter});
  if (num_tokens == 0 || inter == 0) return;
  const int grid = util::to_int(num_tokens, "silu_and_mul rows");
  LLMCORE_DISPATCH_HALF(x.dtype(), T, {
    SiluAndMulParams<T> p{out.data_as<T>(), x.data_as<T>(), inter};
    // 16-byte accesses when every gate, up and out row starts 16-byte aligned.
    if (inter % 8 == 0 && util::is_aligned(x.data(), 16) && util::is_aligned(out.data(), 16)) {
      SiluAndMulKernel<T, 8><<<grid, util::row_block_threads(inter / 8, 256), 0, stream>>>(p);
    } else {
      SiluAndMulKernel<T, 1><<<grid, util::row_block_threads(inter, 256), 0, stream>>>(p);
    }
    LLMCORE_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace llmcore::kernels
