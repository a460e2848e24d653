// Device helpers shared by the row-wise kernels: fixed-size vectors for 16-byte loads and stores,
// and a block-wide float sum whose order depends only on blockDim (batch invariance).
#pragma once

#include <cuda_runtime.h>

#include "kernels/common/dispatch.cuh"

namespace llmcore::kernels {

// N elements of T moved as one access: 16 bytes for 8 bf16/fp16 values, so the load is a single
// 128-bit instruction when the address is 16-byte aligned (the launchers check that).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
  return *reinterpret_cast<const Vec<T, N>*>(p);
}

template <typename T, int N>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& v) {
  *reinterpret_cast<Vec<T, N>*>(p) = v;
}

// Rounds through the storage type T and back: the value a T tensor would hold.
template <typename T>
__device__ __forceinline__ float round_to(float x) {
  return to_float(from_float<T>(x));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum of `v` over the block, returned to every thread. blockDim.x must be a multiple of 32 and at
// most 1024. The tree (warp butterflies, then warp 0 over the per-warp sums) is fixed for a given
// blockDim, so the result does not depend on anything but the inputs and the block size.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float warp_sums[32];
  __shared__ float total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int num_warps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < num_warps ? warp_sums[lane] : 0.0f;
    s = warp_sum(s);
    if (lane == 0) total = s;
  }
  __syncthreads();
  return total;
}

}  // namespace llmcore::kernels
