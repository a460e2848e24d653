// Bias add for linear() where cuBLASLt's bias epilogue does not apply (float32 logits with a
// 16-bit bias, or an empty reduction dimension). Each element: out = round(out + bias) in fp32.
#include <algorithm>

#include "kernels/common/dispatch.cuh"
#include "kernels/common/tensor_checks.h"
#include "kernels/kernels.h"

namespace llmcore::kernels {

namespace {

template <typename O, typename B>
struct AddBiasParams {
  O* out;                // [T, N]
  const B* bias;         // [N]
  int64_t num_elements;  // T * N
  int64_t cols;          // N
};

template <typename O, typename B>
__global__ void AddBiasKernel(AddBiasParams<O, B> p) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < p.num_elements;
       i += stride)
    p.out[i] = from_float<O>(to_float(p.out[i]) + to_float(p.bias[i % p.cols]));
}

template <typename O, typename B>
void launch_add_bias(Tensor& out, const Tensor& bias, cudaStream_t stream) {
  AddBiasParams<O, B> p{out.data_as<O>(), bias.data_as<B>(), out.numel(), out.dim(1)};
  constexpr int kThreads = 256;
  const int64_t blocks = std::min<int64_t>(util::ceil_div(p.num_elements, kThreads), 65535);
  AddBiasKernel<O, B><<<static_cast<int>(blocks), kThreads, 0, stream>>>(p);
  LLMCORE_CUDA_CHECK_LAUNCH();
}

}  // namespace

void add_bias(Tensor& out, const Tensor& bias, cudaStream_t stream) {
  util::check_cuda_matrix(out, "add_bias out");
  const int64_t cols = out.dim(1);
  LLMCORE_CHECK(bias.device() == Device::kCUDA && bias.shape() == Shape{cols},
                "add_bias: bias must be a cuda [", cols, "] tensor, got ",
                device_name(bias.device()), " ", shape_str(bias.shape()));
  if (out.numel() == 0) return;
  const DType o = out.dtype(), b = bias.dtype();
  if (o == DType::kF32 && b == DType::kF32) {
    launch_add_bias<float, float>(out, bias, stream);
  } else if (o == DType::kF32) {
    LLMCORE_DISPATCH_HALF(b, B, { launch_add_bias<float, B>(out, bias, stream); });
  } else {
    LLMCORE_CHECK(o == b, "add_bias: bias dtype ", dtype_name(b), " does not match out dtype ",
                  dtype_name(o));
    LLMCORE_DISPATCH_HALF(o, O, { launch_add_bias<O, O>(out, bias, stream); });
  }
}

}  // namespace llmcore::kernels
