// CudaGraph: a captured sequence of work on one CudaBackend's stream, replayed with one launch.
// Used for decode steps (engine/executor.cpp): a step's ~200 kernel launches cost more host time
// than the GPU needs for them at small batch sizes.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>

namespace llmcore {

class CudaBackend;

class CudaGraph {
 public:
  CudaGraph() = default;
  ~CudaGraph();
  CudaGraph(CudaGraph&& other) noexcept;
  CudaGraph& operator=(CudaGraph&& other) noexcept;
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  // Records what `body` enqueues on the backend's stream (nothing runs). Memory `body`
  // allocates for that stream comes from the private pool `pool_id` (see
  // cuda::CachingAllocator::PrivatePool): tensors `body` keeps alive hold the graph's outputs,
  // the rest is scratch the replays reuse. `body` must not synchronize.
  static CudaGraph capture(CudaBackend& backend, uintptr_t pool_id, const std::function<void()>& body);

  // Enqueues the captured work on the backend's stream.
  void replay();
  bool valid() const { return exec_ != nullptr; }

 private:
  cudaGraphExec_t exec_ = nullptr;
  cudaStream_t stream_ = nullptr;
  int device_ = 0;
};

}  // namespace llmcore
