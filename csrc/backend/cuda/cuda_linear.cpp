// linear via cuBLASLt, batch invariant.
//
// Why: greedy output must not depend on which requests share a step (DESIGN.md principle 6). A
// GEMM library picks its kernel from the problem shape, and M here is T, the number of tokens in
// the step. Different kernels tile and split the K reduction differently, so the same input row
// comes out with different bits when T changes. Split-K is the worst offender: the number of
// K-splits (and so the order of the partial sums) is chosen from M.
//
// How: the algorithm is chosen once per (N, K, input dtype, output dtype, bias epilogue, weight
// alignment, role), among cublasLtMatmulAlgoGetHeuristic's candidates at a few representative M
// (kRoleTokens: the role's heuristic sizes), with the heuristic restricted to algorithms without a split-K reduction
// (REDUCTION_SCHEME_MASK = NONE) and split-K forced to 1. Each candidate is timed on the real
// weight at the role's timed M (for kAny decode- and prefill-sized; its best of 3 timings, the candidates
// taking turns) and the one with the smallest worst time / best time over those M wins: no
// single M's pick is good at both ends (an M = 128 pick ran o_proj at M = 1 at 45% of memory
// bandwidth on an H100). A prompt row and a generated row may have plans of their own (GemmRole),
// since a row's role does not depend on the batch either. That configuration (algorithm id,
// tile, stages, ...) is cached and passed explicitly to every cublasLtMatmul for that weight
// shape, whatever T is. With one kernel and no split-K, every output element is one thread's
// fp32 accumulation over K in the kernel's fixed order, so its bits depend only on its input row
// and the weight, not on T or on the row's position in the batch.
//
// Alignment is part of the choice (cuBLASLt picks kernels by pointer alignment too). The inputs'
// alignment requirement is derived from the row strides alone, and an x, out or bias pointer that
// is less aligned than that (a view starting at an odd row) is staged through an aligned scratch
// copy, so pointer offsets cannot select another algorithm either.
//
// Before a configuration is accepted, cublasLtMatmulAlgoCheck must pass for a spread of T from 1
// to 65536; the first heuristic candidate that passes them all is used.
#include "backend/cuda/cuda_linear.h"

#include <cublasLt.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend/cuda/cuda_allocator.h"
#include "backend/cuda/cuda_device.h"
#include "kernels/common/cuda_check.h"
#include "kernels/kernels.h"

#define LLMCORE_CUBLAS_CHECK(call)                                               \
  do {                                                                           \
    cublasStatus_t st_ = (call);                                                 \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                            \
      ::llmcore::throw_runtime_error(__FILE__, ":", __LINE__, ": ", #call, ": ", \
                                     cublasLtGetStatusName(st_), " (",           \
                                     cublasLtGetStatusString(st_), ")");         \
  } while (0)

namespace llmcore::cuda {

namespace {

// Token counts every chosen configuration must accept (cublasLtMatmulAlgoCheck).
constexpr int64_t kProbeTokens[] = {1,   2,   3,   7,   8,    16,   31,    64,
                                    127, 128, 255, 256, 1000, 4096, 16384, 65536};
constexpr int kHeuristicCandidates = 16;
constexpr size_t kBiasAlignment = 256;  // cuBLASLt reads the bias pointer's alignment too

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::kBF16:
      return CUDA_R_16BF;
    case DType::kF16:
      return CUDA_R_16F;
    case DType::kF32:
      return CUDA_R_32F;
    default:
      break;
  }
  throw_runtime_error("linear: no cuBLAS type for ", dtype_name(t));
}

// Largest power of two <= 16 that divides v (16 for v == 0).
uint32_t pow2_alignment(uint64_t v) {
  uint32_t a = 16;
  while (a > 1 && v % a != 0) a /= 2;
  return a;
}

// The operation and layouts of one GEMM call, in cuBLASLt's column-major terms:
//   weight [N, K] row-major = column-major K x N, used transposed (A),
//   x      [T, K] row-major = column-major K x T                  (B),
//   out    [T, N] row-major = column-major N x T                  (C = D, beta = 0).
struct Problem {
  cublasLtMatmulDescOpaque_t desc;
  cublasLtMatrixLayoutOpaque_t a, b, d;

  Problem(int64_t n, int64_t k, int64_t tokens, DType in, DType out, const void* bias) {
    LLMCORE_CUBLAS_CHECK(cublasLtMatmulDescInit(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
    LLMCORE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(&desc, CUBLASLT_MATMUL_DESC_TRANSA,
                                                        &trans_a, sizeof(trans_a)));
    LLMCORE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(&desc, CUBLASLT_MATMUL_DESC_TRANSB,
                                                        &trans_b, sizeof(trans_b)));
    if (bias != nullptr) {
      const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
      LLMCORE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(&desc, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                          &epilogue, sizeof(epilogue)));
      LLMCORE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(&desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                          &bias, sizeof(bias)));
    }
    LLMCORE_CUBLAS_CHECK(cublasLtMatrixLayoutInit(&a, cuda_type(in), static_cast<uint64_t>(k),
                                                  static_cast<uint64_t>(n), k));
    LLMCORE_CUBLAS_CHECK(cublasLtMatrixLayoutInit(&b, cuda_type(in), static_cast<uint64_t>(k),
                                                  static_cast<uint64_t>(tokens), k));
    LLMCORE_CUBLAS_CHECK(cublasLtMatrixLayoutInit(&d, cuda_type(out), static_cast<uint64_t>(n),
                                                  static_cast<uint64_t>(tokens), n));
  }
};

}  // namespace

struct CublasLtLinear::Plan {
  cublasLtMatmulAlgo_t algo;
  size_t workspace_bytes = 0;
};

CublasLtLinear::CublasLtLinear(int device, cudaStream_t stream) : device_(device), stream_(stream) {
  DeviceGuard guard(device_);
  cublasLtHandle_t handle = nullptr;
  LLMCORE_CUBLAS_CHECK(cublasLtCreate(&handle));
  handle_ = handle;
  workspace_ =
      empty_on_stream({static_cast<int64_t>(kWorkspaceBytes)}, DType::kU8, device_, stream_);
}

CublasLtLinear::~CublasLtLinear() {
  if (handle_ != nullptr) {
    DeviceGuard guard(device_);
    cublasLtDestroy(static_cast<cublasLtHandle_t>(handle_));
  }
}

size_t CublasLtLinear::num_plans() const {
  std::lock_guard<std::mutex> lock(mu_);
  return plans_.size();
}

const CublasLtLinear::Plan& CublasLtLinear::plan_for(const PlanKey& key, const void* weight,
                                                     const void* bias_ptr) {
  std::lock_guard<std::mutex> lock(mu_);
  auto found = plans_.find(key);
  if (found != plans_.end()) return *found->second;

  const auto [n, k, in_i, out_i, use_bias, weight_align, role] = key;
  const RoleTokens& sizes = kRoleTokens[role];
  const DType in = static_cast<DType>(in_i), out = static_cast<DType>(out_i);
  const void* bias = use_bias ? bias_ptr : nullptr;
  auto handle = static_cast<cublasLtHandle_t>(handle_);

  cublasLtMatmulPreferenceOpaque_t pref;
  LLMCORE_CUBLAS_CHECK(cublasLtMatmulPreferenceInit(&pref));
  const uint64_t max_workspace = kWorkspaceBytes;
  const uint32_t no_reduction = CUBLASLT_REDUCTION_SCHEME_NONE;
  const uint32_t align_a = static_cast<uint32_t>(weight_align);
  const uint32_t align_b = pow2_alignment(static_cast<uint64_t>(k) * dtype_size(in));
  const uint32_t align_d = pow2_alignment(static_cast<uint64_t>(n) * dtype_size(out));
  LLMCORE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      &pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_workspace, sizeof(max_workspace)));
  LLMCORE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      &pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &no_reduction, sizeof(no_reduction)));
  LLMCORE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      &pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof(align_a)));
  LLMCORE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      &pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof(align_b)));
  LLMCORE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      &pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d, sizeof(align_d)));
  LLMCORE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      &pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d, sizeof(align_d)));

  // Candidates: the heuristic's picks at each representative M, without duplicates.
  std::vector<cublasLtMatmulAlgo_t> candidates;
  int num_results_total = 0;
  for (int64_t m : sizes.heuristic) {
    if (m == 0) break;
    Problem rep(n, k, m, in, out, bias);
    cublasLtMatmulHeuristicResult_t results[kHeuristicCandidates];
    std::memset(results, 0, sizeof(results));
    int num_results = 0;
    LLMCORE_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle, &rep.desc, &rep.a, &rep.b, &rep.d,
                                                        &rep.d, &pref, kHeuristicCandidates, results,
                                                        &num_results));
    num_results_total += num_results;
    for (int i = 0; i < num_results; ++i) {
      if (results[i].state != CUBLAS_STATUS_SUCCESS) continue;
      cublasLtMatmulAlgo_t algo = results[i].algo;
      const int32_t one_split = 1;
      if (cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &one_split,
                                               sizeof(one_split)) != CUBLAS_STATUS_SUCCESS ||
          cublasLtMatmulAlgoConfigSetAttribute(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME,
                                               &no_reduction, sizeof(no_reduction)) != CUBLAS_STATUS_SUCCESS)
        continue;
      bool seen = false;
      for (const cublasLtMatmulAlgo_t& c : candidates) seen = seen || std::memcmp(&c, &algo, sizeof(algo)) == 0;
      if (!seen) candidates.push_back(algo);
    }
  }

  // Keep those valid for every batch size, with their workspace needs.
  std::vector<std::unique_ptr<Plan>> valid;
  for (const cublasLtMatmulAlgo_t& algo : candidates) {
    auto plan = std::make_unique<Plan>();
    plan->algo = algo;
    bool accepted = true;
    for (int64_t tokens : kProbeTokens) {
      Problem probe(n, k, tokens, in, out, bias);
      cublasLtMatmulHeuristicResult_t check;
      std::memset(&check, 0, sizeof(check));
      if (cublasLtMatmulAlgoCheck(handle, &probe.desc, &probe.a, &probe.b, &probe.d, &probe.d,
                                  &plan->algo, &check) != CUBLAS_STATUS_SUCCESS ||
          check.workspaceSize > kWorkspaceBytes) {
        accepted = false;
        break;
      }
      plan->workspace_bytes = std::max(plan->workspace_bytes, check.workspaceSize);
    }
    if (accepted) valid.push_back(std::move(plan));
  }

  if (!valid.empty()) {
    size_t best = 0;
    if (valid.size() > 1) {
      // Time each at every timed M of the role (capped so the output stays under 256 MiB) on the real
      // weight, with the weight's own rows as inputs (real, non-zero data).
      const size_t out_size = dtype_size(out);
      std::vector<std::vector<float>> ms(valid.size());
      cudaEvent_t start = nullptr, stop = nullptr;
      LLMCORE_CUDA_CHECK(cudaEventCreate(&start));
      LLMCORE_CUDA_CHECK(cudaEventCreate(&stop));
      for (int64_t m_want : sizes.timed) {
        if (m_want == 0) break;
        const int64_t m = std::max<int64_t>(1, std::min<int64_t>(m_want, (int64_t{256} << 20) / (n * out_size)));
        Tensor x = empty_on_stream({m, k}, in, device_, stream_);
        Tensor d = empty_on_stream({m, n}, out, device_, stream_);
        const size_t row_bytes = static_cast<size_t>(k) * dtype_size(in);
        for (int64_t r = 0; r < m; r += std::min(m - r, n)) {
          const int64_t rows = std::min(m - r, n);
          LLMCORE_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(x.data()) + r * row_bytes, weight,
                                             rows * row_bytes, cudaMemcpyDeviceToDevice, stream_));
        }
        Problem problem(n, k, m, in, out, bias);
        const float alpha = 1.0f, beta = 0.0f;
        // Each candidate's best of kTrials timings, the candidates taking turns, so a slow moment
        // of the GPU cannot decide between close candidates: with one timing each, the plans
        // picked for the same shapes changed between loads, and batch-1 decode of the 8B shape at
        // TP 2 on H200s with them (3.98 to 4.16 ms/token). A timing covers about kWindowMs (at
        // least 2 and at most 20 launches): decode-sized GEMMs take microseconds.
        constexpr int kTrials = 3;
        constexpr float kWindowMs = 0.3f;
        std::vector<int> reps(valid.size(), 2);
        for (size_t c = 0; c < valid.size(); ++c) ms[c].push_back(1e30f);
        for (int trial = 0; trial < kTrials; ++trial) {
          for (size_t c = 0; c < valid.size(); ++c) {
            auto launch = [&] {
              LLMCORE_CUBLAS_CHECK(cublasLtMatmul(handle, &problem.desc, &alpha, weight, &problem.a, x.data(),
                                                  &problem.b, &beta, d.data(), &problem.d, d.data(), &problem.d,
                                                  &valid[c]->algo, workspace_.data(), valid[c]->workspace_bytes,
                                                  stream_));
            };
            auto time_launches = [&](int n) {
              LLMCORE_CUDA_CHECK(cudaEventRecord(start, stream_));
              for (int rep = 0; rep < n; ++rep) launch();
              LLMCORE_CUDA_CHECK(cudaEventRecord(stop, stream_));
              LLMCORE_CUDA_CHECK(cudaEventSynchronize(stop));
              float elapsed = 0.0f;
              LLMCORE_CUDA_CHECK(cudaEventElapsedTime(&elapsed, start, stop));
              return elapsed / n;
            };
            if (trial == 0) {  // warm-up, and how many launches make a window
              const float once = std::max(time_launches(1), 1e-4f);
              reps[c] = std::clamp(static_cast<int>(kWindowMs / once), 2, 20);
            }
            ms[c].back() = std::min(ms[c].back(), time_launches(reps[c]));
          }
        }
      }
      cudaEventDestroy(start);
      cudaEventDestroy(stop);
      // The candidate whose worst slowdown over the timed M (time / fastest candidate's time) is
      // smallest; the sum of slowdowns breaks ties. A sum alone let a candidate 1.5x slower at
      // M = 1 win on prefill sizes, and which one won moved with timing noise.
      double best_worst = 0.0, best_sum = 0.0;
      const bool log = std::getenv("LLMCORE_LOG_GEMM_PLANS") != nullptr;
      for (size_t c = 0; c < valid.size(); ++c) {
        double worst = 0.0, sum = 0.0;
        for (size_t j = 0; j < ms[c].size(); ++j) {
          float fastest = ms[c][j];
          for (size_t o = 0; o < valid.size(); ++o) fastest = std::min(fastest, ms[o][j]);
          const double slowdown = ms[c][j] / std::max(fastest, 1e-6f);
          worst = std::max(worst, slowdown);
          sum += slowdown;
        }
        if (log) {
          std::fprintf(stderr, "llmcore gemm plan [%lld, %lld] role %d candidate %zu:", static_cast<long long>(n),
                       static_cast<long long>(k), role, c);
          for (size_t j = 0; j < ms[c].size(); ++j) std::fprintf(stderr, " M=%lld %.4f ms", static_cast<long long>(sizes.timed[j]), ms[c][j]);
          std::fprintf(stderr, " worst %.3f sum %.3f\n", worst, sum);
        }
        if (c == 0 || worst < best_worst - 1e-9 || (worst < best_worst + 0.02 && sum < best_sum)) {
          best = c;
          best_worst = worst;
          best_sum = sum;
        }
      }
      if (log)
        std::fprintf(stderr, "llmcore gemm plan [%lld, %lld] role %d: candidate %zu of %zu\n", static_cast<long long>(n),
                     static_cast<long long>(k), role, best, valid.size());
    }
    const Plan& chosen = *valid[best];
    plans_.emplace(key, std::move(valid[best]));
    return chosen;
  }
  throw_runtime_error(
      "linear: cuBLASLt has no split-K-free algorithm valid for every batch size "
      "for weight [",
      n, ", ", k, "] ", dtype_name(in), " -> ", dtype_name(out), use_bias ? " with bias" : "", " (",
      num_results_total, " candidates tried)");
}

void CublasLtLinear::run(Tensor& out, const Tensor& x, const Tensor& weight, const Tensor* bias, GemmRole role) {
  LLMCORE_CHECK(x.device() == Device::kCUDA && weight.device() == Device::kCUDA &&
                    out.device() == Device::kCUDA,
                "linear: x, weight and out must be on cuda, got ", device_name(x.device()), ", ",
                device_name(weight.device()), ", ", device_name(out.device()));
  LLMCORE_CHECK(x.ndim() == 2 && weight.ndim() == 2, "linear: x ", shape_str(x.shape()),
                " and weight ", shape_str(weight.shape()), " must be 2-D");
  const DType in = x.dtype();
  LLMCORE_CHECK(in == DType::kBF16 || in == DType::kF16,
                "linear: x must be bfloat16 or float16, got ", dtype_name(in));
  const int64_t tokens = x.dim(0), k = x.dim(1), n = weight.dim(0);
  LLMCORE_CHECK(weight.dim(1) == k && weight.dtype() == in, "linear: x ", dtype_name(in), " ",
                shape_str(x.shape()), " does not match weight ", dtype_name(weight.dtype()), " ",
                shape_str(weight.shape()));
  LLMCORE_CHECK(out.dtype() == in || out.dtype() == DType::kF32, "linear: out must be ",
                dtype_name(in), " or float32, got ", dtype_name(out.dtype()));
  out.check("linear out", out.dtype(), {tokens, n});
  if (bias != nullptr) {
    LLMCORE_CHECK(bias->device() == Device::kCUDA, "linear: bias must be on cuda");
    bias->check("linear bias", in, {n});
  }
  LLMCORE_CHECK(out.data() != x.data() || out.nbytes() == 0, "linear: out must not alias x");
  if (tokens == 0 || n == 0) return;

  DeviceGuard guard(device_);
  if (k == 0) {  // an empty sum: out = bias or 0
    LLMCORE_CUDA_CHECK(cudaMemsetAsync(out.data(), 0, out.nbytes(), stream_));
    if (bias != nullptr) kernels::add_bias(out, *bias, stream_);
    return;
  }

  const bool bias_epilogue = bias != nullptr && out.dtype() == in;
  const size_t in_size = dtype_size(in);
  const uint32_t align_b = pow2_alignment(static_cast<uint64_t>(k) * in_size);
  const uint32_t align_d = pow2_alignment(static_cast<uint64_t>(n) * dtype_size(out.dtype()));
  const int weight_align = static_cast<int>(
      std::min(pow2_alignment(static_cast<uint64_t>(k) * in_size),
               pow2_alignment(static_cast<uint64_t>(reinterpret_cast<uintptr_t>(weight.data())))));

  // Stage under-aligned pointers (see the top of this file) so they cannot change the algorithm.
  Tensor x_staged, out_staged, bias_staged;
  const Tensor* x_use = &x;
  if (reinterpret_cast<uintptr_t>(x.data()) % align_b != 0) {
    x_staged = aligned_copy(x, device_, stream_);
    x_use = &x_staged;
  }
  Tensor* out_use = &out;
  if (reinterpret_cast<uintptr_t>(out.data()) % align_d != 0) {
    out_staged = empty_on_stream(out.shape(), out.dtype(), device_, stream_);
    out_use = &out_staged;
  }
  const void* bias_ptr = nullptr;
  if (bias_epilogue) {
    bias_ptr = bias->data();
    if (reinterpret_cast<uintptr_t>(bias_ptr) % kBiasAlignment != 0) {
      bias_staged = aligned_copy(*bias, device_, stream_);
      bias_ptr = bias_staged.data();
    }
  }

  const PlanKey key{
      n, k, static_cast<int>(in), static_cast<int>(out.dtype()), bias_epilogue, weight_align, static_cast<int>(role)};
  const Plan& plan = plan_for(key, weight.data(), bias_ptr);
  Problem problem(n, k, tokens, in, out.dtype(), bias_ptr);
  const float alpha = 1.0f, beta = 0.0f;
  LLMCORE_CUBLAS_CHECK(cublasLtMatmul(
      static_cast<cublasLtHandle_t>(handle_), &problem.desc, &alpha, weight.data(), &problem.a,
      x_use->data(), &problem.b, &beta, out_use->data(), &problem.d, out_use->data(), &problem.d,
      &plan.algo, workspace_.data(), plan.workspace_bytes, stream_));
  if (bias != nullptr && !bias_epilogue) kernels::add_bias(*out_use, *bias, stream_);
  if (out_use != &out)
    LLMCORE_CUDA_CHECK(cudaMemcpyAsync(out.data(), out_use->data(), out.nbytes(),
                                       cudaMemcpyDeviceToDevice, stream_));
}

}  // namespace llmcore::cuda
