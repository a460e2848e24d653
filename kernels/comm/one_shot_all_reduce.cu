// One-shot all-reduce over peer memory, for the small messages of decode steps: every rank copies
// its tensor into its own staging buffer, meets the others at a per-block flag barrier, then reads
// every rank's staging buffer over NVLink and sums them in rank order (float accumulation), so all
// ranks get the same bits and each element's sum depends on nothing but the ranks' values (batch
// invariant at any number of ranks). One process owns all the GPUs, so peer pointers are plain
// device pointers (cudaDeviceEnablePeerAccess), no IPC.
//
// Block b of every rank handles the same slice of the message and synchronizes only with block b
// of the peers: it copies its slice, publishes its epoch in each peer's flag array, waits for the
// peers' epochs, then sums. Every call runs the same grid, so every block's epoch is the call
// count, and staging buffers alternate between two phases by its parity: a rank reaching call
// k + 2 has passed call k + 1's barrier, which every peer reached only after finishing call k, so
// nobody still reads the buffer being overwritten. Epochs come from per-block device counters, so
// CUDA graph replays advance them like eager calls.
#include <cstdint>

#include "kernels/common/dispatch.cuh"
#include "kernels/kernels.h"

namespace llmcore::kernels {
namespace {

__device__ __forceinline__ uint64_t global_timer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

template <typename T>
__device__ __forceinline__ void add_unit(float (&acc)[8], const uint4& v) {
  const T* h = reinterpret_cast<const T*>(&v);
#pragma unroll
  for (int i = 0; i < static_cast<int>(16 / sizeof(T)); ++i) acc[i] += to_float(h[i]);
}

template <typename T>
__global__ void OneShotAllReduceKernel(T* x, int64_t num_units, OneShotAllReduce p) {
  constexpr int kPer = 16 / sizeof(T);  // elements per 16-byte unit
  const int b = blockIdx.x;
  __shared__ uint32_t epoch_s;
  __shared__ int timed_out_s;
  if (threadIdx.x == 0) {
    epoch_s = ++p.counters[b];
    // Once a peer has timed out the group is failing: do not wait again (the error stays set).
    timed_out_s = *reinterpret_cast<volatile int*>(p.failed) != 0;
  }
  __syncthreads();
  if (timed_out_s) return;
  const uint32_t epoch = epoch_s;
  const int phase = static_cast<int>(epoch & 1u);
  const int64_t per = (num_units + gridDim.x - 1) / gridDim.x;
  const int64_t begin = per * b;
  const int64_t end = begin + per < num_units ? begin + per : num_units;

  uint4* mine = static_cast<uint4*>(p.buffers[phase][p.rank]);
  const uint4* in = reinterpret_cast<const uint4*>(x);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) mine[i] = in[i];
  __syncthreads();

  // Publish this block's epoch to every rank (own included), then wait for theirs.
  const int t = threadIdx.x;
  if (t < p.world) {
    __threadfence_system();
    volatile uint32_t* their = p.flags[t] + b * kOneShotMaxRanks + p.rank;
    *their = epoch;
    volatile uint32_t* from = p.flags[p.rank] + b * kOneShotMaxRanks + t;
    const uint64_t start = global_timer_ns();
    while (static_cast<int32_t>(*from - epoch) < 0) {
      if (global_timer_ns() - start > p.timeout_ns) {
        timed_out_s = 1;
        *reinterpret_cast<volatile int*>(p.failed) = 1;
        atomicOr_system(p.error, 1);  // mapped host memory: only written on this path
        break;
      }
    }
    __threadfence_system();
  }
  __syncthreads();
  if (timed_out_s) return;  // a peer never came: the result is garbage and the error word says so

  uint4* out = reinterpret_cast<uint4*>(x);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int r = 0; r < p.world; ++r) add_unit<T>(acc, static_cast<const uint4*>(p.buffers[phase][r])[i]);
    uint4 v;
    T* h = reinterpret_cast<T*>(&v);
#pragma unroll
    for (int k = 0; k < kPer; ++k) h[k] = from_float<T>(acc[k]);
    out[i] = v;
  }
}

}  // namespace

bool one_shot_all_reduce(Tensor& x, const OneShotAllReduce& p, cudaStream_t stream) {
  const size_t bytes = x.nbytes();
  if (bytes == 0) return true;
  if (bytes % 16 != 0 || bytes > p.buffer_bytes || (reinterpret_cast<uintptr_t>(x.data()) % 16) != 0) return false;
  if (x.dtype() != DType::kBF16 && x.dtype() != DType::kF16 && x.dtype() != DType::kF32) return false;
  const int64_t units = static_cast<int64_t>(bytes / 16);
  constexpr int kThreads = 512;
  // Always the same grid (some blocks may have nothing to copy but still meet at the barrier):
  // every block's epoch then counts calls, so the staging phase alternates per call (see above).
  constexpr int blocks = kOneShotMaxBlocks;
  if (x.dtype() == DType::kF32) {
    OneShotAllReduceKernel<float><<<blocks, kThreads, 0, stream>>>(x.data_as<float>(), units, p);
  } else {
    LLMCORE_DISPATCH_HALF(x.dtype(), T, {
      OneShotAllReduceKernel<T><<<blocks, kThreads, 0, stream>>>(static_cast<T*>(x.data()), units, p);
    });
  }
  LLMCORE_CUDA_CHECK_LAUNCH();
  return true;
}

}  // namespace llmcore::kernels
