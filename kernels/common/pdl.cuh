// Programmatic dependent launch (Hopper and later): a kernel launched with
// launch_with_pdl may start while the kernel before it in the stream is still running, and must
// call pdl_wait() before it touches anything that kernel writes; until then it can only read
// what no earlier kernel writes (weights). A kernel that calls pdl_launch_dependents() lets such
// a successor start as soon as all of its own blocks have made that call, instead of when they
// exit. Both are no-ops before sm_90, and pdl_wait() returns at once in a kernel launched without
// the attribute. LLMCORE_PDL=0 (read once) launches everything the ordinary way.
//
// pdl_wait() returns once the kernel before has completed and its writes are visible. Every CTA
// of a kernel launched this way calls it before it exits (also a CTA with nothing to do), so a
// grid never completes before the one before it, and a chain of such launches stays ordered
// however early each of them starts. A decode step launches its GEMMs, RMSNorms, rotary and
// attention kernels this way: each one's launch, its metadata reads and (GEMMs) its first
// weights overlap the kernel before it.
#pragma once

#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>

#include "kernels/common/cuda_check.h"
#include "kernels/common/device_caps.h"

namespace llmcore::kernels {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

// Whether launches on the current device may overlap this way (compute capability >= 9.0).
inline bool pdl_enabled() {
  static const bool allowed = [] {
    const char* v = std::getenv("LLMCORE_PDL");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  if (!allowed) return false;
  int device = 0;
  return cudaGetDevice(&device) == cudaSuccess && compute_capability_major(device) >= 9;
}

// kernel<<<grid, block, smem, stream>>>(args...), allowed to overlap the previous kernel's tail.
template <typename... Params, typename... Args>
void launch_with_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                     Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attr;
  config.numAttrs = pdl_enabled() ? 1 : 0;
  LLMCORE_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

}  // namespace llmcore::kernels
