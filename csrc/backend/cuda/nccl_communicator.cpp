#include "backend/cuda/nccl_communicator.h"

#ifdef LLMCORE_WITH_NCCL

#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>
#include <cstdio>
#include <thread>

#include "kernels/common/cuda_check.h"
#include "kernels/kernels.h"

namespace llmcore {
namespace {

// The one-shot all-reduces' device memory on every GPU of the group (kernels.h): per rank two
// staging buffers, the flag array and the epoch counters of the two-phase kernel, two LL receive
// areas and the LL epoch counters, and an error word each rank's host reads without a copy
// (mapped pinned memory). Null from create() when some GPU pair has no peer
// access or LLMCORE_CUSTOM_ALL_REDUCE=0: NCCL then does every all-reduce.
class OneShotGroup {
 public:
  static std::shared_ptr<OneShotGroup> create(const std::vector<CudaBackend*>& backends) {
    const int world = static_cast<int>(backends.size());
    const char* env = std::getenv("LLMCORE_CUSTOM_ALL_REDUCE");
    // LLMCORE_ONE_SHOT_LL_BYTES: the largest message of the LL kernels (0: two-phase only).
    const char* ll_env = std::getenv("LLMCORE_ONE_SHOT_LL_BYTES");
    const size_t ll_bytes = ll_env != nullptr ? std::min<size_t>(std::strtoull(ll_env, nullptr, 10), kMaxLLBytes) & ~size_t{15}
                                              : kLLBytes;
    if (world < 2 || world > kernels::kOneShotMaxRanks || (env != nullptr && std::string(env) == "0")) return nullptr;
    for (int i = 0; i < world; ++i) {
      for (int j = 0; j < world; ++j) {
        int can = 0;
        if (i != j && (cudaDeviceCanAccessPeer(&can, backends[i]->device_index(), backends[j]->device_index()) !=
                           cudaSuccess || !can)) {
          return nullptr;
        }
      }
    }
    auto g = std::shared_ptr<OneShotGroup>(new OneShotGroup());
    g->params_.resize(world);
    for (int i = 0; i < world; ++i) {
      cuda::DeviceGuard guard(backends[i]->device_index());
      for (int j = 0; j < world; ++j) {
        if (i == j) continue;
        const cudaError_t e = cudaDeviceEnablePeerAccess(backends[j]->device_index(), 0);
        if (e == cudaErrorPeerAccessAlreadyEnabled) {
          cudaGetLastError();
        } else {
          LLMCORE_CUDA_CHECK(e);
        }
      }
    }
    const size_t flag_bytes = sizeof(uint32_t) * kernels::kOneShotMaxBlocks * kernels::kOneShotMaxRanks;
    const size_t counter_bytes = sizeof(uint32_t) * kernels::kOneShotMaxBlocks;
    const size_t ll_counter_bytes = sizeof(uint32_t) * kernels::kOneShotLLBlocks;
    const size_t ll_slot_bytes = 2 * ll_bytes + 16 * kernels::kOneShotLLBlocks;  // lines, then tokens
    for (int r = 0; r < world; ++r) {
      cuda::DeviceGuard guard(backends[r]->device_index());
      kernels::OneShotAllReduce& p = g->params_[r];
      p.world = world;
      p.rank = r;
      p.buffer_bytes = kBufferBytes;
      p.ll_bytes = ll_bytes;
      p.ll_slot_bytes = ll_slot_bytes;
      p.timeout_ns = kTimeoutNs;
      for (int phase = 0; phase < 2; ++phase) {
        p.buffers[phase][r] = g->device_alloc(kBufferBytes);
        p.ll[phase][r] = g->device_alloc(ll_slot_bytes * world);
        LLMCORE_CUDA_CHECK(cudaMemset(p.ll[phase][r], 0, ll_slot_bytes * world));  // epoch 0: never a call's
      }
      p.ll_counters = static_cast<uint32_t*>(g->device_alloc(ll_counter_bytes));
      LLMCORE_CUDA_CHECK(cudaMemset(p.ll_counters, 0, ll_counter_bytes));
      p.flags[r] = static_cast<uint32_t*>(g->device_alloc(flag_bytes));
      p.counters = static_cast<uint32_t*>(g->device_alloc(counter_bytes));
      p.failed = static_cast<int*>(g->device_alloc(sizeof(int)));
      LLMCORE_CUDA_CHECK(cudaMemset(p.failed, 0, sizeof(int)));
      LLMCORE_CUDA_CHECK(cudaMemset(p.flags[r], 0, flag_bytes));
      LLMCORE_CUDA_CHECK(cudaMemset(p.counters, 0, counter_bytes));
      int* host = nullptr;
      LLMCORE_CUDA_CHECK(cudaHostAlloc(&host, sizeof(int), cudaHostAllocMapped | cudaHostAllocPortable));
      *host = 0;
      g->host_errors_.push_back(host);
      LLMCORE_CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&p.error), host, 0));
    }
    for (int r = 0; r < world; ++r) {  // everyone's pointers in everyone's parameters
      for (int q = 0; q < world; ++q) {
        g->params_[r].buffers[0][q] = g->params_[q].buffers[0][q];
        g->params_[r].buffers[1][q] = g->params_[q].buffers[1][q];
        g->params_[r].flags[q] = g->params_[q].flags[q];
        g->params_[r].ll[0][q] = g->params_[q].ll[0][q];
        g->params_[r].ll[1][q] = g->params_[q].ll[1][q];
      }
    }
    return g;
  }

  ~OneShotGroup() {
    for (const auto& [device, ptr] : allocations_) {
      cuda::DeviceGuard guard(device);
      cudaFree(ptr);
    }
    for (int* h : host_errors_) cudaFreeHost(h);
  }

  const kernels::OneShotAllReduce& params(int rank) const { return params_[rank]; }
  bool failed(int rank) const { return *reinterpret_cast<volatile int*>(host_errors_[rank]) != 0; }

  // 8 MiB per phase: a decode step of 512 sequences at hidden size 8192 in bf16.
  static constexpr size_t kBufferBytes = size_t{8} << 20;
  // LL messages up to 256 KiB by default (32 sequences at hidden size 4096, 16 at 8192): from
  // 512 KiB on, the doubled bytes of the LL lines make it slower than the two-phase kernel
  // (benchmarks/all_reduce.py on 2 H200s). Their lines take twice the bytes per sender and parity.
  static constexpr size_t kLLBytes = size_t{256} << 10;
  static constexpr size_t kMaxLLBytes = size_t{8} << 20;
  static constexpr uint64_t kTimeoutNs = uint64_t{30} * 1000 * 1000 * 1000;

 private:
  OneShotGroup() = default;
  void* device_alloc(size_t bytes) {
    void* p = nullptr;
    LLMCORE_CUDA_CHECK(cudaMalloc(&p, bytes));
    int device = 0;
    cudaGetDevice(&device);
    allocations_.emplace_back(device, p);
    return p;
  }

  std::vector<kernels::OneShotAllReduce> params_;
  std::vector<std::pair<int, void*>> allocations_;
  std::vector<int*> host_errors_;
};

#define LLMCORE_NCCL_CHECK(expr)                                                                  \
  do {                                                                                            \
    const ncclResult_t r_ = (expr);                                                               \
    if (r_ != ncclSuccess) throw_runtime_error("NCCL error in " #expr ": ", ncclGetErrorString(r_), \
                                               " (", ncclGetLastError(nullptr), ")");              \
  } while (0)

ncclDataType_t nccl_dtype(DType t) {
  switch (t) {
    case DType::kF32:
      return ncclFloat32;
    case DType::kBF16:
      return ncclBfloat16;
    case DType::kF16:
      return ncclFloat16;
    default:
      throw_runtime_error("NCCL collectives take float32, bfloat16 or float16 tensors, not ", dtype_name(t));
  }
}

class NcclCommunicator final : public parallel::Communicator {
 public:
  NcclCommunicator(std::shared_ptr<parallel::GroupState> group, std::shared_ptr<std::atomic<bool>> nccl_aborted,
                   std::shared_ptr<OneShotGroup> one_shot, ncclComm_t comm, CudaBackend& backend, int rank, int world,
                   double step_timeout_s)
      : Communicator(std::move(group)),
        comm_(comm),
        backend_(backend),
        rank_(rank),
        world_(world),
        step_timeout_s_(step_timeout_s),
        nccl_aborted_(std::move(nccl_aborted)),
        one_shot_(std::move(one_shot)) {
    cuda::DeviceGuard guard(backend_.device_index());
    LLMCORE_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  }

  // Every rank's communicator is destroyed at the same time, each on its own thread (after the
  // CUDA graphs that captured its collectives): ncclCommDestroy waits for the peers. Where some
  // rank had to cut its collectives short (ncclCommAbort), the others abort too.
  ~NcclCommunicator() override {
    cuda::DeviceGuard guard(backend_.device_index());
    if (!comm_aborted_) {
      if (nccl_aborted_->load()) {
        ncclCommAbort(comm_);
      } else {
        ncclCommDestroy(comm_);
      }
    }
    cudaEventDestroy(done_);
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }

  void all_reduce_sum(Tensor& x) override {
    check_usable(x, "all_reduce_sum x");
    cuda::DeviceGuard guard(backend_.device_index());
    // Small messages (decode steps): the one-shot peer-memory kernel, rank-ordered sums.
    if (one_shot_ && kernels::one_shot_all_reduce(x, one_shot_->params(rank_), backend_.stream())) return;
    LLMCORE_NCCL_CHECK(ncclAllReduce(x.data(), x.data(), static_cast<size_t>(x.numel()), nccl_dtype(x.dtype()), ncclSum,
                                     comm_, backend_.stream()));
  }

  bool all_reduce_add_rms_norm(Tensor& x, Tensor& residual, const Tensor& weight, float eps) override {
    check_usable(x, "all_reduce_add_rms_norm x");
    if (!one_shot_) return false;
    cuda::DeviceGuard guard(backend_.device_index());
    return kernels::one_shot_all_reduce_add_rms_norm(x, residual, weight, eps, one_shot_->params(rank_),
                                                     backend_.stream());
  }

  void all_gather_columns(Tensor& out, const Tensor& in) override {
    check_usable(in, "all_gather_columns in");
    check_usable(out, "all_gather_columns out");
    LLMCORE_CHECK(out.ndim() == 2 && in.ndim() == 2 && out.dim(0) == in.dim(0) && out.dtype() == in.dtype(),
                  "all_gather_columns: out ", shape_str(out.shape()), ", in ", shape_str(in.shape()));
    const int64_t rows = in.dim(0), n = in.dim(1), N = out.dim(1);
    LLMCORE_CHECK(n * world_ >= N && n * (world_ - 1) < N, "all_gather_columns: ", world_, " parts of ", n,
                  " columns cannot make ", N);
    if (rows == 0) return;
    cuda::DeviceGuard guard(backend_.device_index());
    // Every rank's [rows, n] block, rank after rank, then each block into its columns.
    Tensor parts = backend_.empty({world_, rows, n}, in.dtype());
    LLMCORE_NCCL_CHECK(ncclAllGather(in.data(), parts.data(), static_cast<size_t>(rows * n), nccl_dtype(in.dtype()),
                                     comm_, backend_.stream()));
    const size_t elem = dtype_size(in.dtype());
    for (int r = 0; r < world_; ++r) {
      const auto [begin, end] = parallel::column_part(N, world_, r);
      if (end <= begin) continue;
      LLMCORE_CUDA_CHECK(cudaMemcpy2DAsync(static_cast<char*>(out.data()) + begin * elem, N * elem,
                                           static_cast<const char*>(parts.data()) + r * rows * n * elem, n * elem,
                                           (end - begin) * elem, rows, cudaMemcpyDeviceToDevice, backend_.stream()));
    }
  }

  void synchronize() override {
    cuda::DeviceGuard guard(backend_.device_index());
    if (!comm_aborted_) LLMCORE_CUDA_CHECK(cudaEventRecord(done_, backend_.stream()));
    const auto start = std::chrono::steady_clock::now();
    double aborted_at = -1;  // when this rank saw the group aborted
    while (true) {
      const cudaError_t e = cudaEventQuery(done_);
      if (e == cudaSuccess) break;
      if (e != cudaErrorNotReady) {
        LLMCORE_CUDA_CHECK(e);
      }
      const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (group_->aborted() && aborted_at < 0) aborted_at = waited;
      // The group failed and this rank's work still has not finished a moment later: its
      // collectives wait for a rank that will not come. Only then are they cut short
      // (ncclCommAbort); a rank that failed before the step's collectives leaves none waiting.
      if (aborted_at >= 0 && waited - aborted_at > kAbortedStreamGraceS) {
        std::fprintf(stderr, "llmcore: tensor-parallel rank %d: its collectives wait for a failed rank (%s); "
                     "aborting its NCCL communicator\n", rank_, group_->reason().c_str());
        abort_comm();
        cudaStreamSynchronize(backend_.stream());  // drains now; the results are garbage
        cudaGetLastError();
        std::fprintf(stderr, "llmcore: tensor-parallel rank %d: stopped\n", rank_);
        break;
      }
      if (waited > step_timeout_s_ && !group_->aborted()) {
        abort(str_cat("rank ", rank_, "'s step did not finish within ", step_timeout_s_,
                      " s (a rank is stuck; LLMCORE_TP_STEP_TIMEOUT_S sets the limit)"));
        continue;
      }
      // Poll without sleeping for the length of any normal step (a sleep would add its length to
      // every decode step); a rank waiting longer than that is waiting for a slow peer.
      if (waited < 0.05) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
    }
    if (one_shot_ && one_shot_->failed(rank_)) {
      abort(str_cat("rank ", rank_, ": a peer did not reach a one-shot all-reduce within ",
                    OneShotGroup::kTimeoutNs / 1000000000, " s"));
    }
    group_->check(rank_);
    backend_.synchronize();  // reports kernel-detected index errors of this rank
  }

  // Marks the group failed; the NCCL communicators are cut short only where a rank's collectives
  // are left waiting (synchronize()).
  void abort(const std::string& reason) override {
    if (!group_->aborted()) {
      std::fprintf(stderr, "llmcore: tensor-parallel rank %d: aborting the group: %s\n", rank_, reason.c_str());
    }
    group_->abort(reason);
  }

 private:
  void check_usable(const Tensor& t, const char* what) {
    group_->check(rank_);
    LLMCORE_CHECK(t.device() == Device::kCUDA, what, " must be on cuda");
  }

  void abort_comm() {
    if (comm_aborted_) return;
    comm_aborted_ = true;
    nccl_aborted_->store(true);
    cuda::DeviceGuard guard(backend_.device_index());
    ncclCommAbort(comm_);
  }

  static constexpr double kAbortedStreamGraceS = 1.0;

  ncclComm_t comm_;
  CudaBackend& backend_;
  const int rank_;
  const int world_;
  const double step_timeout_s_;
  cudaEvent_t done_ = nullptr;
  bool comm_aborted_ = false;
  std::shared_ptr<std::atomic<bool>> nccl_aborted_;  // shared by the group: some rank called ncclCommAbort
  std::shared_ptr<OneShotGroup> one_shot_;           // null: NCCL does every all-reduce
};

}  // namespace

std::vector<std::unique_ptr<parallel::Communicator>> create_nccl_communicators(
    const std::vector<CudaBackend*>& backends, double step_timeout_s) {
  const int world = static_cast<int>(backends.size());
  LLMCORE_CHECK(world >= 1, "no backends");
  std::vector<int> devices;
  for (CudaBackend* b : backends) devices.push_back(b->device_index());
  std::vector<ncclComm_t> comms(static_cast<size_t>(world), nullptr);
  LLMCORE_NCCL_CHECK(ncclCommInitAll(comms.data(), world, devices.data()));
  auto group = std::make_shared<parallel::GroupState>();
  auto nccl_aborted = std::make_shared<std::atomic<bool>>(false);
  std::shared_ptr<OneShotGroup> one_shot = OneShotGroup::create(backends);
  std::vector<std::unique_ptr<parallel::Communicator>> out;
  for (int r = 0; r < world; ++r) {
    out.push_back(std::make_unique<NcclCommunicator>(group, nccl_aborted, one_shot, comms[r], *backends[r], r, world,
                                                     step_timeout_s));
  }
  return out;
}

}  // namespace llmcore

#endif  // LLMCORE_WITH_NCCL
