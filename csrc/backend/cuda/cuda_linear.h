// linear() on the GPU: out [T, N] = x [T, K] @ weight [N, K]^T (+ bias [N]) through cuBLASLt,
// batch invariant. See cuda_linear.cpp for why and how.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "core/tensor.h"

namespace llmcore::cuda {

class CublasLtLinear {
 public:
  // Creates the cuBLASLt handle and the workspace on `device`; GEMMs run on `stream`.
  CublasLtLinear(int device, cudaStream_t stream);
  ~CublasLtLinear();
  CublasLtLinear(const CublasLtLinear&) = delete;
  CublasLtLinear& operator=(const CublasLtLinear&) = delete;

  // x, weight: bf16 or fp16 (one dtype); out: that dtype or float32; bias: x's dtype or null.
  void run(Tensor& out, const Tensor& x, const Tensor& weight, const Tensor* bias);

  // GEMM plans chosen so far (one per weight shape, output dtype, bias use and alignment).
  size_t num_plans() const;

  // Token counts the candidates come from (cuBLASLt's heuristic is asked at each) and are timed
  // at: decode-sized and prefill-sized steps (see the .cpp).
  static constexpr int64_t kHeuristicTokens[] = {1, 128, 2048};
  static constexpr int64_t kTimedTokens[] = {1, 64, 2048};
  static constexpr size_t kWorkspaceBytes = size_t{32} << 20;

 private:
  struct Plan;
  // (N, K, input dtype, output dtype, bias epilogue, weight alignment in bytes)
  using PlanKey = std::tuple<int64_t, int64_t, int, int, bool, int>;

  const Plan& plan_for(const PlanKey& key, const void* weight, const void* bias_ptr);

  int device_;
  cudaStream_t stream_;
  void* handle_ = nullptr;  // cublasLtHandle_t, kept opaque so this header needs no cuBLAS
  Tensor workspace_;        // [kWorkspaceBytes] uint8 on the device
  mutable std::mutex mu_;
  std::map<PlanKey, std::unique_ptr<Plan>> plans_;
};

}  // namespace llmcore::cuda
