// RMSNorm, plain and fused with the residual add (vLLM's fused_add_rms_norm): one block per row,
// the sum of squares in fp32 reduced in an order fixed by the block size, which depends only on
// the hidden size, so a row's bits never depend on the batch.
//
// Rounding follows HF's LlamaRMSNorm / vLLM on 16-bit activations: the residual stream is stored
// in the activation dtype (the sum of squares reads the stored, rounded residual), the normalized
// value x * inv_rms is rounded to the activation dtype before the weight multiplies it, and the
// product is rounded once more.
#include "kernels/common/dispatch.cuh"
#include "kernels/common/pdl.cuh"
#include "kernels/common/tensor_checks.h"
#include "kernels/common/vec.cuh"
#include "kernels/kernels.h"

namespace llmcore::kernels {

namespace {

template <typename T>
struct RmsNormParams {
  T* out;           // [T, Hd]: normalized rows; may alias x
  const T* x;       // [T, Hd]: rows to normalize, or (fused) the block output to add
  T* residual;      // [T, Hd]: fused only: the residual stream, updated in place
  const T* weight;  // [Hd]
  int hidden;       // Hd
  float eps;
};

// One block per row; each thread handles vectors i = threadIdx.x, + blockDim.x, ... in both
// passes, so the second pass re-reads only what the same thread wrote in the first.
template <typename T, int kVec, bool kAddResidual>
__global__ void RmsNormKernel(RmsNormParams<T> p) {
  pdl_launch_dependents();  // the GEMM after it may start loading its weights (common/pdl.cuh)
  pdl_wait();               // x and residual come from the kernels before
  const int64_t row_start = static_cast<int64_t>(blockIdx.x) * p.hidden;
  const T* x = p.x + row_start;                                   // [Hd]
  T* out = p.out + row_start;                                     // [Hd]
  T* residual = kAddResidual ? p.residual + row_start : nullptr;  // [Hd]
  const int num_vecs = p.hidden / kVec;

  float sum_sq = 0.0f;
  for (int i = threadIdx.x; i < num_vecs; i += blockDim.x) {
    const Vec<T, kVec> xv = load_vec<T, kVec>(x + i * kVec);
    if constexpr (kAddResidual) {
      Vec<T, kVec> rv = load_vec<T, kVec>(residual + i * kVec);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        rv.v[j] = from_float<T>(to_float(rv.v[j]) + to_float(xv.v[j]));
        const float r = to_float(rv.v[j]);
        sum_sq += r * r;
      }
      store_vec<T, kVec>(residual + i * kVec, rv);
    } else {
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const float f = to_float(xv.v[j]);
        sum_sq += f * f;
      }
    }
  }
  const float inv_rms = rsqrtf(block_sum(sum_sq) / static_cast<float>(p.hidden) + p.eps);

  const T* src = kAddResidual ? residual : x;  // [Hd]
  for (int i = threadIdx.x; i < num_vecs; i += blockDim.x) {
    const Vec<T, kVec> sv = load_vec<T, kVec>(src + i * kVec);
    const Vec<T, kVec> wv = load_vec<T, kVec>(p.weight + i * kVec);
    Vec<T, kVec> ov;
#pragma unroll
    for (int j = 0; j < kVec; ++j)
      ov.v[j] = from_float<T>(round_to<T>(to_float(sv.v[j]) * inv_rms) * to_float(wv.v[j]));
    store_vec<T, kVec>(out + i * kVec, ov);
  }
}

template <typename T, bool kAddResidual>
void launch_rms_norm(const RmsNormParams<T>& p, int64_t num_tokens, cudaStream_t stream) {
  if (num_tokens == 0) return;
  const int grid = util::to_int(num_tokens, "rms_norm rows");
  // 16-byte vectors when every row starts 16-byte aligned.
  const bool vec8 = p.hidden % 8 == 0 && util::is_aligned(p.out, 16) && util::is_aligned(p.x, 16) &&
                    util::is_aligned(p.weight, 16) &&
                    (!kAddResidual || util::is_aligned(p.residual, 16));
  if (vec8) {
    const int threads = util::row_block_threads(p.hidden / 8);
    launch_with_pdl(RmsNormKernel<T, 8, kAddResidual>, dim3(grid), dim3(threads), 0, stream, p);
  } else {
    const int threads = util::row_block_threads(p.hidden);
    launch_with_pdl(RmsNormKernel<T, 1, kAddResidual>, dim3(grid), dim3(threads), 0, stream, p);
  }
}

}  // namespace

void rms_norm(Tensor& out, const Tensor& x, const Tensor& weight, float eps, cudaStream_t stream) {
  util::check_cuda_matrix(x, "rms_norm x");
  util::check_half(x.dtype(), "rms_norm x");
  const int64_t num_tokens = x.dim(0);
  const int hidden = util::to_int(x.dim(1), "rms_norm hidden size");
  LLMCORE_CHECK(hidden > 0, "rms_norm needs a non-empty hidden dimension");
  util::check_cuda(out, "rms_norm out", x.dtype(), x.shape());
  util::check_cuda(weight, "rms_norm weight", x.dtype(), {hidden});
  LLMCORE_DISPATCH_HALF(x.dtype(), T, {
    RmsNormParams<T> p{out.data_as<T>(), x.data_as<T>(), nullptr, weight.data_as<T>(), hidden, eps};
    launch_rms_norm<T, false>(p, num_tokens, stream);
  });
}

void add_rms_norm(Tensor& x, Tensor& residual, const Tensor& weight, float eps,
                  cudaStream_t stream) {
  util::check_cuda_matrix(x, "add_rms_norm x");
  util::check_half(x.dtype(), "add_rms_norm x");
  const int64_t num_tokens = x.dim(0);
  const int hidden = util::to_int(x.dim(1), "add_rms_norm hidden size");
  LLMCORE_CHECK(hidden > 0, "add_rms_norm needs a non-empty hidden dimension");
  util::check_cuda(residual, "add_rms_norm residual", x.dtype(), x.shape());
  util::check_cuda(weight, "add_rms_norm weight", x.dtype(), {hidden});
  LLMCORE_CHECK(x.data() != residual.data() || num_tokens == 0,
                "add_rms_norm: x and residual must not alias");
  LLMCORE_DISPATCH_HALF(x.dtype(), T, {
    RmsNormParams<T> p{x.data_as<T>(),      x.data_as<T>(), residual.data_as<T>(),
                       weight.data_as<T>(), hidden,         eps};
    launch_rms_norm<T, true>(p, num_tokens, stream);
  });
}

}  // namespace llmcore::kernels
