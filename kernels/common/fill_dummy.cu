// load_format="dummy" weights drawn on the GPU: out[i] = dummy_value(stream, i, bound) rounded to
// out's dtype, the same numbers the CPU backend's twin writes (core/dummy_values.h).
#include "core/dummy_values.h"
#include "kernels/common/dispatch.cuh"
#include "kernels/kernels.h"

namespace llmcore::kernels {
namespace {

template <typename T>
__global__ void FillDummyKernel(T* out, int64_t n, int64_t cols, int64_t first, int64_t row_stride, uint64_t stream,
                                float bound) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t src = first + i / cols * row_stride + i % cols;
    out[i] = from_float<T>(dummy_value(stream, static_cast<uint64_t>(src), bound));
  }
}

}  // namespace

void fill_dummy(Tensor& out, uint64_t stream, float bound, int64_t first, int64_t row_stride,
                cudaStream_t cuda_stream) {
  LLMCORE_CHECK(out.device() == Device::kCUDA, "fill_dummy: out must be on cuda");
  const int64_t n = out.numel();
  if (n == 0) return;
  const int64_t cols = out.ndim() == 0 ? n : n / out.dim(0);
  if (row_stride < 0) row_stride = cols;
  constexpr int kThreads = 256;
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t{132} * 64);
  if (out.dtype() == DType::kF32) {
    FillDummyKernel<float><<<static_cast<unsigned>(blocks), kThreads, 0, cuda_stream>>>(
        out.data_as<float>(), n, cols, first, row_stride, stream, bound);
  } else {
    LLMCORE_DISPATCH_HALF(out.dtype(), T, {
      FillDummyKernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, cuda_stream>>>(
          static_cast<T*>(out.data()), n, cols, first, row_stride, stream, bound);
    });
  }
  LLMCORE_CUDA_CHECK_LAUNCH();
}

}  // namespace llmcore::kernels
