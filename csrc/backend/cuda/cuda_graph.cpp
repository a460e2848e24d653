#include "backend/cuda/cuda_graph.h"

#include <utility>

#include "backend/cuda/cuda_allocator.h"
#include "backend/cuda/cuda_backend.h"
#include "kernels/common/cuda_check.h"

namespace llmcore {

CudaGraph::~CudaGraph() {
  if (exec_ != nullptr) {
    cuda::DeviceGuard guard(device_);
    cudaGraphExecDestroy(exec_);
  }
}

CudaGraph::CudaGraph(CudaGraph&& other) noexcept
    : exec_(std::exchange(other.exec_, nullptr)), stream_(other.stream_), device_(other.device_) {}

CudaGraph& CudaGraph::operator=(CudaGraph&& other) noexcept {
  if (this != &other) {
    CudaGraph old(std::move(*this));
    exec_ = std::exchange(other.exec_, nullptr);
    stream_ = other.stream_;
    device_ = other.device_;
  }
  return *this;
}

CudaGraph CudaGraph::capture(CudaBackend& backend, uintptr_t pool_id, const std::function<void()>& body) {
  CudaGraph g;
  g.device_ = backend.device_index();
  g.stream_ = backend.stream();
  cuda::DeviceGuard guard(g.device_);
  // Nothing of earlier steps may still run: capture records, it does not order against them.
  backend.synchronize();
  cudaGraph_t graph = nullptr;
  {
    cuda::CachingAllocator::PrivatePool pool(g.device_, g.stream_, pool_id);
    // Relaxed: the allocator may cudaMalloc fresh blocks for the pool while capturing.
    LLMCORE_CUDA_CHECK(cudaStreamBeginCapture(g.stream_, cudaStreamCaptureModeRelaxed));
    try {
      body();
    } catch (...) {
      cudaStreamEndCapture(g.stream_, &graph);
      if (graph != nullptr) cudaGraphDestroy(graph);
      cudaGetLastError();
      throw;
    }
    LLMCORE_CUDA_CHECK(cudaStreamEndCapture(g.stream_, &graph));
  }
  const cudaError_t err = cudaGraphInstantiate(&g.exec_, graph, 0);
  cudaGraphDestroy(graph);
  LLMCORE_CUDA_CHECK(err);
  return g;
}

void CudaGraph::replay() {
  LLMCORE_CHECK(exec_ != nullptr, "replay of an empty CUDA graph");
  cuda::DeviceGuard guard(device_);
  LLMCORE_CUDA_CHECK(cudaGraphLaunch(exec_, stream_));
}

}  // namespace llmcore
