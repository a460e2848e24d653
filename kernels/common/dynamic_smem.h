// Kernels that take more than the 48 KB of dynamic shared memory a launch gets without asking:
// the attribute is per device, so it is set once per (kernel, device).
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "kernels/common/cuda_check.h"

namespace llmcore::kernels {

// Lets `kernel` launch with up to `bytes` of dynamic shared memory on the current device.
// `done_devices` is the caller's static record of the devices already set (one per kernel; devices
// 64 and up are set on every call).
inline void allow_dynamic_smem(const void* kernel, size_t bytes,
                               std::atomic<uint64_t>& done_devices) {
  int device = 0;
  LLMCORE_CUDA_CHECK(cudaGetDevice(&device));
  const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
  if (bit != 0 && (done_devices.load(std::memory_order_acquire) & bit) != 0) return;
  LLMCORE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(bytes)));
  done_devices.fetch_or(bit, std::memory_order_release);
}

}  // namespace llmcore::kernels
