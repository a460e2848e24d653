// SwiGLU's gate on one element, shared by silu_and_mul.cu and the decode GEMM's fused epilogue
// (linear/skinny_gemm.cu), so both give the same bits: silu runs in fp32 and is rounded to the
// activation dtype T before the multiply, as HF's `act_fn(gate_proj(x)) * up_proj(x)` and vLLM's
// silu_and_mul do on 16-bit tensors. gate and up are values of T.
#pragma once

#include <cuda_runtime.h>

#include "kernels/common/dispatch.cuh"
#include "kernels/common/vec.cuh"

namespace llmcore::kernels {

template <typename T>
__device__ __forceinline__ T silu_times(float gate, float up) {
  const float silu = round_to<T>(gate / (1.0f + expf(-gate)));
  return from_float<T>(silu * up);
}

}  // namespace llmcore::kernels
