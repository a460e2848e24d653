// The caching GPU allocator. The model allocates its intermediates every step; cudaMalloc and
// cudaFree synchronize and cost tens of microseconds, so freed blocks go to free lists and are
// handed out again, and cudaFree runs only when the caller asks to release the cache (or an
// allocation would otherwise fail).
//
// Stream rule (as PyTorch's allocator): a block belongs to the stream it was allocated for and is
// only reused for that stream. Work on one stream runs in order, so a block freed on the host
// while kernels that use it are still queued is safe to hand out again: the next user's kernels
// run after them. Blocks of Tensor::empty(..., Device::kCUDA) belong to the legacy default stream
// (null); CudaBackend's stream is a blocking stream, so it is ordered against that stream's work.
//
// Size classes: requests are rounded up to 512 bytes, then to one of 8 classes per power of two
// (at most 12.5% slack); requests of 64 MiB and more round to 2 MiB instead (the KV cache must
// not waste an eighth of the GPU). A request may take a cached block up to one class larger.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace llmcore::cuda {

// Bytes per device. reserved = in_use + cached.
struct AllocatorStats {
  size_t reserved_bytes = 0;       // held from cudaMalloc
  size_t in_use_bytes = 0;         // handed out (size-class bytes, not requested bytes)
  size_t cached_bytes = 0;         // free, waiting for reuse
  size_t peak_in_use_bytes = 0;    // since the last reset_peak
  size_t peak_reserved_bytes = 0;  // since the last reset_peak
  int64_t num_cuda_mallocs = 0;    // cache misses that went to cudaMalloc
  int64_t num_cache_hits = 0;
};

class CachingAllocator {
 public:
  // The process-wide instance. It is never destroyed: tensors freed during static destruction
  // must still find it, and no CUDA call runs at exit.
  static CachingAllocator& instance();

  // A block of at least `nbytes` on `device` for work on `stream`; nullptr for 0 bytes. Throws
  // RuntimeError with the device's numbers when cudaMalloc fails even after the cache is released.
  void* allocate(size_t nbytes, int device, cudaStream_t stream);
  // Returns a block to its free list (no CUDA call). Unknown pointers abort: a deleter cannot
  // throw, and freeing memory this allocator did not hand out is a bug worth stopping for.
  void deallocate(void* p);

  AllocatorStats stats(int device) const;
  void reset_peak(int device);
  // cudaFree every cached block of `device` (after a device sync); returns the bytes released.
  size_t release_cached(int device);
  // Called before `stream` is destroyed, after it was synchronized: its cached blocks are
  // released and its live blocks move to the legacy default stream's pool when freed.
  void retire_stream(int device, cudaStream_t stream);

  // The class a request of `nbytes` (> 0) is served from.
  static size_t size_class(size_t nbytes);

  // Private pools, for CUDA graphs: while a PrivatePool guard lives, allocations the calling
  // thread makes for (device, stream) come from, and return to, the pool named `pool_id` instead
  // of the stream's own. Eager work never gets those blocks and release_cached() leaves them
  // alone, so a graph's replays can keep using the addresses it captured; graphs that never run
  // at the same time may share one pool.
  class PrivatePool {
   public:
    PrivatePool(int device, cudaStream_t stream, uintptr_t pool_id);
    ~PrivatePool();
    PrivatePool(const PrivatePool&) = delete;
    PrivatePool& operator=(const PrivatePool&) = delete;
  };
  // Gives a private pool's cached blocks back to CUDA (after a device sync) once nothing that
  // uses them remains (its graphs and their tensors are gone); returns the bytes released.
  size_t release_private_pool(int device, uintptr_t pool_id);

 private:
  CachingAllocator() = default;

  struct Block {
    size_t size;  // class bytes
    int device;
    cudaStream_t stream;
  };
  using PoolKey = std::pair<int, cudaStream_t>;
  using FreeList = std::map<size_t, std::vector<void*>>;  // class bytes -> free blocks

  // With mu_ held: cudaFree the cached blocks of `device` (all streams when `only_stream` is
  // false, else just `stream`'s); returns the bytes released.
  size_t release_locked(int device, bool only_stream, cudaStream_t stream);
  AllocatorStats& stats_locked(int device);

  mutable std::mutex mu_;
  std::vector<PoolKey> private_pools_;     // never released
  std::unordered_map<void*, Block> live_;  // handed out
  std::map<PoolKey, FreeList> free_;       // cached, per (device, stream)
  std::map<int, AllocatorStats> stats_;
};

// Registers CachingAllocator::instance() for Device::kCUDA (Tensor::empty), allocating on the
// calling thread's current device for the legacy default stream. Idempotent.
void register_cuda_allocator();

// An uninitialized GPU tensor from the caching allocator, on `device`, for work on `stream`.
Tensor empty_on_stream(Shape shape, DType dtype, int device, cudaStream_t stream);

// A device copy of `src` in fresh (256-byte aligned) memory, ordered on `stream`: stages a view
// whose start is less aligned than a kernel needs.
Tensor aligned_copy(const Tensor& src, int device, cudaStream_t stream);

}  // namespace llmcore::cuda
