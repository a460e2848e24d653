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

// Which rows a GEMM computes, for the choice of its plan. A row's role never depends on the batch
// (backend.h, RowKinds), so each role may have a plan of its own and every row stays batch
// invariant: a prompt row always comes out of the prompt plan, a generated row out of the
// generated-row plan.
enum class GemmRole : int {
  kAny = 0,        // callers that do not tell the kinds apart: timed at decode and prefill sizes
  kPrompt = 1,     // prompt rows: timed at prefill chunk sizes
  kGenerated = 2,  // generated-token rows: timed at decode batch sizes
};

class CublasLtLinear {
 public:
  // Creates the cuBLASLt handle and the workspace on `device`; GEMMs run on `stream`.
  CublasLtLinear(int device, cudaStream_t stream);
  ~CublasLtLinear();
  CublasLtLinear(const CublasLtLinear&) = delete;
  CublasLtLinear& operator=(const CublasLtLinear&) = delete;

  // x, weight: bf16 or fp16 (one dtype); out: that dtype or float32; bias: x's dtype or null.
  // role: whose plan computes the rows.
  void run(Tensor& out, const Tensor& x, const Tensor& weight, const Tensor* bias, GemmRole role = GemmRole::kAny);

  // GEMM plans chosen so far (one per weight shape, output dtype, bias use, alignment and role).
  size_t num_plans() const;

  // Token counts a role's candidates come from (cuBLASLt's heuristic is asked at each) and are
  // timed at (see the .cpp; 0 ends a list): kAny decode and prefill sizes, kPrompt prefill chunks
  // (the engine's default budget is 8192 tokens per step), kGenerated decode batches (up to 256
  // sequences).
  struct RoleTokens {
    int64_t heuristic[4];
    int64_t timed[4];
  };
  static constexpr RoleTokens kRoleTokens[] = {
      {{1, 128, 2048, 0}, {1, 64, 2048, 0}},                // kAny
      {{512, 2048, 4096, 8192}, {512, 2048, 4096, 8192}},  // kPrompt
      {{1, 64, 256, 0}, {1, 64, 256, 0}},                   // kGenerated
  };
  static constexpr size_t kWorkspaceBytes = size_t{32} << 20;

 private:
  struct Plan;
  // (N, K, input dtype, output dtype, bias epilogue, weight alignment in bytes, role)
  using PlanKey = std::tuple<int64_t, int64_t, int, int, bool, int, int>;

  const Plan& plan_for(const PlanKey& key, const void* weight, const void* bias_ptr);

  int device_;
  cudaStream_t stream_;
  void* handle_ = nullptr;  // cublasLtHandle_t, kept opaque so this header needs no cuBLAS
  Tensor workspace_;        // [kWorkspaceBytes] uint8 on the device
  mutable std::mutex mu_;
  std::map<PlanKey, std::unique_ptr<Plan>> plans_;
};

}  // namespace llmcore::cuda
