// CUDA error checks for host code: plain C++ (no device code), so both .cu files and the
// backend's .cpp files can include it.
#pragma once

#include <cuda_runtime.h>

#include "core/error.h"

// Throws RuntimeError with the call and CUDA's message.
#define LLMCORE_CUDA_CHECK(call)                                                 \
  do {                                                                           \
    cudaError_t err_ = (call);                                                   \
    if (err_ != cudaSuccess)                                                     \
      ::llmcore::throw_runtime_error(__FILE__, ":", __LINE__, ": ", #call, ": ", \
                                     cudaGetErrorString(err_));                  \
  } while (0)

// After a launch: a bad configuration shows up here, not at the next sync.
#define LLMCORE_CUDA_CHECK_LAUNCH() LLMCORE_CUDA_CHECK(cudaGetLastError())
