#include "backend/cuda/cuda_device.h"

#include <cuda_runtime.h>

#include "kernels/common/cuda_check.h"

namespace llmcore::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: clear the error so later calls do not see it
    return 0;
  }
  return n;
}

int current_device() {
  int d = 0;
  LLMCORE_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

void set_device(int device_index) {
  const int n = device_count();
  LLMCORE_CHECK_ARG(device_index >= 0 && device_index < n, "device_index must be in [0, ", n,
                    ") (the visible GPUs), got ", device_index);
  LLMCORE_CUDA_CHECK(cudaSetDevice(device_index));
}

MemoryInfo memory_info(int device_index) {
  DeviceGuard guard(device_index);
  MemoryInfo info;
  LLMCORE_CUDA_CHECK(cudaMemGetInfo(&info.free_bytes, &info.total_bytes));
  return info;
}

std::string gpu_name(int device_index) {
  cudaDeviceProp prop{};
  LLMCORE_CUDA_CHECK(cudaGetDeviceProperties(&prop, device_index));
  return prop.name;
}

DeviceGuard::DeviceGuard(int device_index) {
  LLMCORE_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device_index) {
    LLMCORE_CUDA_CHECK(cudaSetDevice(device_index));
    switched_ = true;
  }
}

DeviceGuard::~DeviceGuard() {
  // A destructor must not throw; restoring a device that was valid a moment ago does not fail.
  if (switched_) cudaSetDevice(previous_);
}

}  // namespace llmcore::cuda
