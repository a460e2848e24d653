#include "backend/cuda/cuda_allocator.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "backend/cuda/cuda_device.h"
#include "kernels/common/cuda_check.h"

namespace llmcore::cuda {

namespace {

constexpr size_t kMinBlock = 512;
constexpr size_t kLargeRequest = size_t{64} << 20;  // from here on, round to kLargeGranule
constexpr size_t kLargeGranule = size_t{2} << 20;
constexpr int kClassesPerOctave = 8;

size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }

// Largest power of two <= n, for n >= 1.
size_t floor_pow2(size_t n) {
  size_t p = 1;
  while (p <= n / 2) p *= 2;
  return p;
}

}  // namespace

CachingAllocator& CachingAllocator::instance() {
  static CachingAllocator* const allocator = new CachingAllocator();  // never destroyed, see header
  return *allocator;
}

size_t CachingAllocator::size_class(size_t nbytes) {
  const size_t n = round_up(std::max<size_t>(nbytes, 1), kMinBlock);
  if (n >= kLargeRequest) return round_up(n, kLargeGranule);
  const size_t step = std::max(kMinBlock, floor_pow2(n) / kClassesPerOctave);
  return round_up(n, step);
}

AllocatorStats& CachingAllocator::stats_locked(int device) { return stats_[device]; }

namespace {

// The calling thread's private-pool redirection (CachingAllocator::PrivatePool).
struct PoolRedirect {
  bool active = false;
  int device = -1;
  cudaStream_t stream = nullptr;
  cudaStream_t pool = nullptr;  // the pool's key: a stream value no CUDA call ever sees
};
thread_local PoolRedirect t_redirect;

}  // namespace

CachingAllocator::PrivatePool::PrivatePool(int device, cudaStream_t stream, uintptr_t pool_id) {
  LLMCORE_CHECK(!t_redirect.active, "private pools do not nest");
  LLMCORE_CHECK(pool_id != 0, "pool id 0 is the legacy default stream");
  cudaStream_t key = reinterpret_cast<cudaStream_t>(pool_id);
  CachingAllocator& a = instance();
  {
    std::lock_guard<std::mutex> lock(a.mu_);
    const PoolKey pk{device, key};
    if (std::find(a.private_pools_.begin(), a.private_pools_.end(), pk) == a.private_pools_.end()) {
      a.private_pools_.push_back(pk);
    }
  }
  t_redirect = {true, device, stream, key};
}

CachingAllocator::PrivatePool::~PrivatePool() { t_redirect = {}; }

void* CachingAllocator::allocate(size_t nbytes, int device, cudaStream_t stream) {
  if (nbytes == 0) return nullptr;
  if (t_redirect.active && t_redirect.device == device && t_redirect.stream == stream) {
    stream = t_redirect.pool;
  }
  const size_t cls = size_class(nbytes);
  std::lock_guard<std::mutex> lock(mu_);
  AllocatorStats& st = stats_locked(device);

  // Reuse: the smallest cached block of this class or the next (at most 1/8 larger).
  FreeList& pool = free_[PoolKey{device, stream}];
  auto it = pool.lower_bound(cls);
  if (it != pool.end() && it->first <= cls + cls / kClassesPerOctave) {
    void* p = it->second.back();
    const size_t size = it->first;
    it->second.pop_back();
    if (it->second.empty()) pool.erase(it);
    live_.emplace(p, Block{size, device, stream});
    st.cached_bytes -= size;
    st.in_use_bytes += size;
    st.peak_in_use_bytes = std::max(st.peak_in_use_bytes, st.in_use_bytes);
    ++st.num_cache_hits;
    return p;
  }

  // Miss: a fresh block; when the device is full, give the cache back and try once more.
  DeviceGuard guard(device);
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, cls);
  if (err == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear the error before retrying
    release_locked(device, false, nullptr);
    err = cudaMalloc(&p, cls);
  }
  if (err != cudaSuccess) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    throw_runtime_error("CUDA out of memory: cannot allocate ", nbytes, " bytes (class ", cls,
                        ") on device ", device, ": ", cudaGetErrorString(err), "; device free ",
                        free_b, " of ", total_b, " bytes; this process holds ", st.reserved_bytes,
                        " bytes (", st.in_use_bytes, " in use)");
  }
  live_.emplace(p, Block{cls, device, stream});
  st.reserved_bytes += cls;
  st.in_use_bytes += cls;
  st.peak_in_use_bytes = std::max(st.peak_in_use_bytes, st.in_use_bytes);
  st.peak_reserved_bytes = std::max(st.peak_reserved_bytes, st.reserved_bytes);
  ++st.num_cuda_mallocs;
  return p;
}

void CachingAllocator::deallocate(void* p) {
  if (p == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(p);
  if (it == live_.end()) {
    std::fprintf(stderr, "llmcore: CachingAllocator::deallocate(%p): not a live block\n", p);
    std::abort();
  }
  const Block b = it->second;
  live_.erase(it);
  free_[PoolKey{b.device, b.stream}][b.size].push_back(p);
  AllocatorStats& st = stats_locked(b.device);
  st.in_use_bytes -= b.size;
  st.cached_bytes += b.size;
}

AllocatorStats CachingAllocator::stats(int device) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = stats_.find(device);
  return it == stats_.end() ? AllocatorStats{} : it->second;
}

void CachingAllocator::reset_peak(int device) {
  std::lock_guard<std::mutex> lock(mu_);
  AllocatorStats& st = stats_locked(device);
  st.peak_in_use_bytes = st.in_use_bytes;
  st.peak_reserved_bytes = st.reserved_bytes;
}

size_t CachingAllocator::release_cached(int device) {
  std::lock_guard<std::mutex> lock(mu_);
  return release_locked(device, false, nullptr);
}

size_t CachingAllocator::release_locked(int device, bool only_stream, cudaStream_t stream) {
  DeviceGuard guard(device);
  // Cached blocks may still be read or written by queued kernels of their stream.
  LLMCORE_CUDA_CHECK(cudaDeviceSynchronize());
  size_t released = 0;
  for (auto pool = free_.begin(); pool != free_.end();) {
    const bool match =
        pool->first.first == device && (!only_stream || pool->first.second == stream) &&
        std::find(private_pools_.begin(), private_pools_.end(), pool->first) == private_pools_.end();
    if (!match) {
      ++pool;
      continue;
    }
    for (auto& [size, blocks] : pool->second) {
      for (void* p : blocks) {
        LLMCORE_CUDA_CHECK(cudaFree(p));
        released += size;
      }
    }
    pool = free_.erase(pool);
  }
  AllocatorStats& st = stats_locked(device);
  st.reserved_bytes -= released;
  st.cached_bytes -= released;
  return released;
}

size_t CachingAllocator::release_private_pool(int device, uintptr_t pool_id) {
  std::lock_guard<std::mutex> lock(mu_);
  cudaStream_t key = reinterpret_cast<cudaStream_t>(pool_id);
  private_pools_.erase(std::remove(private_pools_.begin(), private_pools_.end(), PoolKey{device, key}),
                       private_pools_.end());
  return release_locked(device, true, key);
}

void CachingAllocator::retire_stream(int device, cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(mu_);
  release_locked(device, true, stream);
  for (auto& [p, block] : live_)
    if (block.device == device && block.stream == stream) block.stream = nullptr;
}

void register_cuda_allocator() {
  static std::once_flag once;
  std::call_once(once, [] {
    register_allocator(Device::kCUDA,
                       Allocator{[](size_t n) {
                                   return CachingAllocator::instance().allocate(n, current_device(),
                                                                                nullptr);
                                 },
                                 [](void* p) { CachingAllocator::instance().deallocate(p); }});
  });
}

Tensor empty_on_stream(Shape shape, DType dtype, int device, cudaStream_t stream) {
  int64_t numel = 1;
  for (int64_t d : shape) {
    LLMCORE_CHECK(d >= 0, "negative dimension in ", shape_str(shape));
    numel *= d;
  }
  const size_t nbytes = static_cast<size_t>(numel) * dtype_size(dtype);
  void* p = CachingAllocator::instance().allocate(nbytes, device, stream);
  std::shared_ptr<void> storage(p, [](void* q) { CachingAllocator::instance().deallocate(q); });
  return Tensor::wrap(p, std::move(shape), dtype, Device::kCUDA, std::move(storage));
}

Tensor aligned_copy(const Tensor& src, int device, cudaStream_t stream) {
  Tensor dst = empty_on_stream(src.shape(), src.dtype(), device, stream);
  LLMCORE_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), src.nbytes(), cudaMemcpyDeviceToDevice, stream));
  return dst;
}

}  // namespace llmcore::cuda
