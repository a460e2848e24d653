// GPU discovery and per-thread device selection: what memory profiling and tensor parallelism
// (one thread per GPU) need from the CUDA runtime, without exposing the runtime to callers.
#pragma once

#include <cstddef>
#include <string>

namespace llmcore::cuda {

// GPUs the CUDA runtime can use; 0 when there is no driver or no device (never throws).
int device_count();

// The calling thread's current device (cudaGetDevice) and setting it (cudaSetDevice). Every CUDA
// call a thread makes goes to its current device; set_device throws ValueError naming the index
// and the device count when the index is out of range.
int current_device();
void set_device(int device_index);

// Free and total memory of a device, in bytes (cudaMemGetInfo). `free_bytes` counts what this
// process has cached in its allocator as used: see CachingAllocator::stats for that part.
struct MemoryInfo {
  size_t free_bytes = 0;
  size_t total_bytes = 0;
};
MemoryInfo memory_info(int device_index);

// "NVIDIA H100 80GB HBM3" and the like.
std::string gpu_name(int device_index);

// Makes `device_index` current for the calling thread for the guard's lifetime, then restores the
// previous device. Cheap when the device is already current.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device_index);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
  bool switched_ = false;
};

}  // namespace llmcore::cuda
