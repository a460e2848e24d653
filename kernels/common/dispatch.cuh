// Runtime dtype -> compile-time type dispatch for kernel launchers, fp32 conversions, and (through
// common/cuda_check.h) the CUDA error checks. Keep the set of instantiated types small:
// activations are bf16 or fp16, accumulation fp32.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/common/cuda_check.h"

// LLMCORE_DISPATCH_HALF(dtype, T, { ...body using T... }): T is __nv_bfloat16 or __half.
#define LLMCORE_DISPATCH_HALF(dtype, T, ...)                                                  \
  do {                                                                                        \
    if ((dtype) == ::llmcore::DType::kBF16) {                                                 \
      using T = __nv_bfloat16;                                                                \
      __VA_ARGS__                                                                             \
    } else if ((dtype) == ::llmcore::DType::kF16) {                                           \
      using T = __half;                                                                       \
      __VA_ARGS__                                                                             \
    } else {                                                                                  \
      ::llmcore::throw_runtime_error("kernel dtype must be bfloat16 or float16, got ",        \
                                     ::llmcore::dtype_name(dtype));                           \
    }                                                                                         \
  } while (0)

// LLMCORE_CUDA_CHECK(call) and LLMCORE_CUDA_CHECK_LAUNCH() live in common/cuda_check.h (host-only,
// so the backend's .cpp files share them).

namespace llmcore {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half(x); }

}  // namespace llmcore
