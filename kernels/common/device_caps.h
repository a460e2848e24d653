// What the host asks of a device before choosing kernels: plain C++ (no device code).
#pragma once

#include <cuda_runtime.h>

#include <atomic>

namespace llmcore::kernels {

// The compute capability's major number of `device`; 0 where the query fails (a failure is not
// remembered). Queried once per device under 64, every call above.
inline int compute_capability_major(int device) {
  static std::atomic<int> majors[64];  // 0: not queried yet
  int m = device >= 0 && device < 64 ? majors[device].load(std::memory_order_relaxed) : 0;
  if (m != 0) return m;
  if (cudaDeviceGetAttribute(&m, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess)
    return 0;
  if (device >= 0 && device < 64) majors[device].store(m, std::memory_order_relaxed);
  return m;
}

}  // namespace llmcore::kernels
