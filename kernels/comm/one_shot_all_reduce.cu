// One-shot all-reduces over peer memory, for the small messages of decode steps. Every rank sums
// all ranks' values in rank order (float accumulation) and rounds once, so all ranks get the same
// bits and each element's sum depends on nothing but the ranks' values (batch invariant at any
// number of ranks). One process owns all the GPUs, so peer pointers are plain device pointers
// (cudaDeviceEnablePeerAccess), no IPC. Two protocols, with the same sums:
//
// LL (messages up to ll_bytes, every decode step): each rank stores its data straight into a slot
// of every peer's receive area as 16-byte lines {d0, epoch, d1, epoch} (NCCL's LL protocol: an
// 8-byte aligned half is written at once, so a line whose two epochs match the call's holds the
// call's data) and then polls its own receive area: one NVLink write latency per call, no fence,
// no flag. The fused variant adds the sum to the residual stream and RMS-normalizes it in the same
// kernel (the add_rms_norm that follows every row-parallel layer), with add_rms_norm's bits.
//
// Two-phase (larger messages): every rank copies its tensor into its own staging buffer, meets the
// others at a per-block flag barrier, then reads every rank's staging buffer over NVLink. Block b
// of every rank handles the same slice of the message and synchronizes only with block b of the
// peers: it copies its slice, publishes its epoch in each peer's flag array, waits for the peers'
// epochs, then sums.
//
// Both alternate two buffers by the parity of the call's epoch. Every call of a protocol runs the
// same grid, and a block's epoch (from a per-block device counter, so CUDA graph replays advance
// it like eager calls) counts the protocol's calls. A rank writing a buffer at call k + 2 has seen
// every peer's call k + 1 (its flag, or in LL its token line: every block exchanges one with each
// peer, even one with no data), and a peer starts call k + 1 only after finishing call k, the last
// to read that buffer.
#include <cstdint>

#include "kernels/common/dispatch.cuh"
#include "kernels/common/tensor_checks.h"
#include "kernels/common/vec.cuh"
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


// --- LL kernels ------------------------------------------------------------------------------------

__device__ __forceinline__ void store_line(uint4* p, uint32_t d0, uint32_t d1, uint32_t epoch) {
  asm volatile("st.volatile.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(d0), "r"(epoch), "r"(d1),
               "r"(epoch)
               : "memory");
}

__device__ __forceinline__ uint4 load_line(const uint4* p) {
  uint4 v;
  asm volatile("ld.volatile.global.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p)
               : "memory");
  return v;
}

// One LL call as a thread sees it.
struct LLCall {
  const OneShotAllReduce* p;
  uint32_t epoch;
  int parity;
  uint64_t start_ns;

  // Lines [line0, ...) of the slot `sender` fills in the receive area of rank `owner`.
  __device__ uint4* slot(int owner, int sender) const {
    return reinterpret_cast<uint4*>(static_cast<char*>(p->ll[parity][owner]) + sender * p->ll_slot_bytes);
  }
  __device__ uint4* token(int owner, int sender) const {
    return slot(owner, sender) + 2 * (p->ll_bytes / 16) + blockIdx.x;
  }

  // True once a peer timed out (this thread may be the one that finds out): stop waiting.
  __device__ bool give_up() const {
    if (*reinterpret_cast<volatile int*>(p->failed) != 0) return true;
    if (global_timer_ns() - start_ns <= p->timeout_ns) return false;
    *reinterpret_cast<volatile int*>(p->failed) = 1;
    atomicOr_system(p->error, 1);  // mapped host memory: only written on this path
    return true;
  }

  // Waits for a line of this call; after a timeout returns whatever is there (the result is
  // garbage and the error word says so).
  __device__ uint4 wait_line(const uint4* line) const {
    for (int spins = 0;; ++spins) {
      const uint4 v = load_line(line);
      if (v.y == epoch && v.w == epoch) return v;
      if ((spins & 1023) == 1023 && give_up()) return v;
    }
  }

  // 16-byte unit u of this rank's data to every peer.
  __device__ void send(int64_t u, const uint4& v) const {
    for (int q = 0; q < p->world; ++q) {
      if (q == p->rank) continue;
      uint4* s = slot(q, p->rank) + 2 * u;
      store_line(s, v.x, v.y, epoch);
      store_line(s + 1, v.z, v.w, epoch);
    }
  }
  // Unit u of rank q's data, from this rank's receive area.
  __device__ uint4 receive(int q, int64_t u) const {
    const uint4* s = slot(p->rank, q) + 2 * u;
    const uint4 a = wait_line(s);
    const uint4 b = wait_line(s + 1);
    return make_uint4(a.x, a.z, b.x, b.z);
  }

  // Every block tells every peer it has started this call and waits to hear the same from them
  // (see the top of the file: what makes reusing a buffer two calls later safe).
  __device__ void send_tokens() const {
    const int q = threadIdx.x;
    if (q < p->world && q != p->rank) store_line(token(q, p->rank), epoch, epoch, epoch);
  }
  __device__ void wait_tokens() const {
    const int q = threadIdx.x;
    if (q < p->world && q != p->rank) wait_line(token(p->rank, q));
  }
};

// Sets up this block's call: its epoch (one more than its last), or false when an earlier call
// timed out (the group is failing: nobody waits again).
__device__ __forceinline__ bool begin_ll_call(const OneShotAllReduce& p, LLCall& call) {
  __shared__ uint32_t epoch_s;
  __shared__ int failed_s;
  if (threadIdx.x == 0) {
    epoch_s = ++p.ll_counters[blockIdx.x];
    failed_s = *reinterpret_cast<volatile int*>(p.failed);
  }
  __syncthreads();
  call = LLCall{&p, epoch_s, static_cast<int>(epoch_s & 1u), global_timer_ns()};
  return failed_s == 0;
}

// Rank-ordered float sum of 16-byte unit u: this rank's own value `mine`, the peers' received.
template <typename T>
__device__ __forceinline__ void sum_unit(const LLCall& call, int64_t u, const uint4& mine, float (&acc)[8]) {
#pragma unroll
  for (int k = 0; k < 8; ++k) acc[k] = 0.0f;
  for (int r = 0; r < call.p->world; ++r) add_unit<T>(acc, r == call.p->rank ? mine : call.receive(r, u));
}

// x = sum over ranks; block b takes a contiguous share of the 16-byte units.
template <typename T>
__global__ void LLAllReduceKernel(T* x, int64_t num_units, OneShotAllReduce p) {
  constexpr int kPer = 16 / sizeof(T);
  LLCall call;
  if (!begin_ll_call(p, call)) return;
  call.send_tokens();
  const int64_t per = (num_units + gridDim.x - 1) / gridDim.x;
  const int64_t begin = per * blockIdx.x;
  const int64_t end = begin + per < num_units ? begin + per : num_units;
  uint4* xv = reinterpret_cast<uint4*>(x);
  for (int64_t u = begin + threadIdx.x; u < end; u += blockDim.x) call.send(u, xv[u]);
  for (int64_t u = begin + threadIdx.x; u < end; u += blockDim.x) {
    float acc[8];
    sum_unit<T>(call, u, xv[u], acc);
    uint4 v;
    T* h = reinterpret_cast<T*>(&v);
#pragma unroll
    for (int k = 0; k < kPer; ++k) h[k] = from_float<T>(acc[k]);
    xv[u] = v;
  }
  call.wait_tokens();
}

// Widest rows the fused kernel takes: one 16-byte unit per thread of a block of at most 512
// (benchmarks/all_reduce.py on 2 H200s: at hidden 8192, 1024 threads per row, the LL all-reduce
// then add_rms_norm took 5.7 us a row, fused 6.6; at 4096 fused 4.7 against 5.1).
constexpr int kMaxFusedHidden = 4096;

// x [rows, hidden] = sum over ranks, then residual += x; x = rms_norm(residual) * weight exactly as
// RmsNormKernel<T, 8, true> (kernels/norm/rms_norm.cu) computes it: same block size (the launcher
// uses row_block_threads(hidden / 8), and hidden <= kMaxFusedHidden, so each thread has at most
// one 16-byte unit of a row: RmsNormKernel's order), same block_sum, same roundings.
// Block b takes rows b, b + gridDim.x, ...: it sends all of them before waiting for any, and each
// thread loads its residual and weight before waiting, so those loads overlap the wait.
template <typename T>
__global__ void LLAllReduceAddRmsNormKernel(T* x, T* residual, const T* weight, int64_t rows, int hidden,
                                            float eps, OneShotAllReduce p) {
  const int vecs = hidden / 8;  // 16-byte units per row, <= blockDim.x
  const int i = threadIdx.x;
  const bool active = i < vecs;
  uint4* xv = reinterpret_cast<uint4*>(x);
  const int64_t first_row = blockIdx.x;
  Vec<T, 8> wv{}, rv{};
  uint4 mine{};
  if (active) {
    wv = load_vec<T, 8>(weight + i * 8);
    if (first_row < rows) {
      mine = xv[first_row * vecs + i];
      rv = load_vec<T, 8>(residual + first_row * hidden + i * 8);
    }
  }
  LLCall call;
  if (!begin_ll_call(p, call)) return;
  call.send_tokens();
  if (active) {
    for (int64_t row = first_row; row < rows; row += gridDim.x)
      call.send(row * vecs + i, row == first_row ? mine : xv[row * vecs + i]);
  }
  for (int64_t row = first_row; row < rows; row += gridDim.x) {
    const int64_t u = row * vecs + i;
    T* res = residual + row * hidden + i * 8;
    if (active && row != first_row) {
      mine = xv[u];
      rv = load_vec<T, 8>(res);
    }
    float sum_sq = 0.0f;
    if (active) {
      float acc[8];
      sum_unit<T>(call, u, mine, acc);
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        rv.v[j] = from_float<T>(to_float(rv.v[j]) + to_float(from_float<T>(acc[j])));
        const float r = to_float(rv.v[j]);
        sum_sq += r * r;
      }
      store_vec<T, 8>(res, rv);
    }
    const float inv_rms = rsqrtf(block_sum(sum_sq) / static_cast<float>(hidden) + eps);
    if (active) {
      Vec<T, 8> ov;
#pragma unroll
      for (int j = 0; j < 8; ++j)
        ov.v[j] = from_float<T>(round_to<T>(to_float(rv.v[j]) * inv_rms) * to_float(wv.v[j]));
      store_vec<T, 8>(x + row * hidden + i * 8, ov);
    }
  }
  call.wait_tokens();
}

}  // namespace

bool one_shot_all_reduce(Tensor& x, const OneShotAllReduce& p, cudaStream_t stream) {
  const size_t bytes = x.nbytes();
  if (bytes == 0) return true;
  if (bytes % 16 != 0 || (reinterpret_cast<uintptr_t>(x.data()) % 16) != 0) return false;
  if (x.dtype() != DType::kBF16 && x.dtype() != DType::kF16 && x.dtype() != DType::kF32) return false;
  const int64_t units = static_cast<int64_t>(bytes / 16);
  constexpr int kThreads = 512;
  if (bytes <= p.ll_bytes) {
    if (x.dtype() == DType::kF32) {
      LLAllReduceKernel<float><<<kOneShotLLBlocks, kThreads, 0, stream>>>(x.data_as<float>(), units, p);
    } else {
      LLMCORE_DISPATCH_HALF(x.dtype(), T, {
        LLAllReduceKernel<T><<<kOneShotLLBlocks, kThreads, 0, stream>>>(static_cast<T*>(x.data()), units, p);
      });
    }
    LLMCORE_CUDA_CHECK_LAUNCH();
    return true;
  }
  if (bytes > p.buffer_bytes) return false;
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

bool one_shot_all_reduce_add_rms_norm(Tensor& x, Tensor& residual, const Tensor& weight, float eps,
                                      const OneShotAllReduce& p, cudaStream_t stream) {
  util::check_cuda_matrix(x, "all_reduce_add_rms_norm x");
  const int64_t rows = x.dim(0);
  const int hidden = util::to_int(x.dim(1), "all_reduce_add_rms_norm hidden size");
  util::check_cuda(residual, "all_reduce_add_rms_norm residual", x.dtype(), x.shape());
  util::check_cuda(weight, "all_reduce_add_rms_norm weight", x.dtype(), {hidden});
  if ((x.dtype() != DType::kBF16 && x.dtype() != DType::kF16) || hidden <= 0 || hidden % 8 != 0 ||
      hidden > kMaxFusedHidden || x.nbytes() > p.ll_bytes || !util::is_aligned(x.data(), 16) || !util::is_aligned(residual.data(), 16) ||
      !util::is_aligned(weight.data(), 16)) {
    return false;
  }
  LLMCORE_CHECK(x.data() != residual.data() || rows == 0, "all_reduce_add_rms_norm: x and residual must not alias");
  if (rows == 0) return true;
  const int threads = util::row_block_threads(hidden / 8);  // RmsNormKernel's: the same reduction order
  LLMCORE_DISPATCH_HALF(x.dtype(), T, {
    LLAllReduceAddRmsNormKernel<T><<<kOneShotLLBlocks, threads, 0, stream>>>(
        x.data_as<T>(), residual.data_as<T>(), weight.data_as<T>(), rows, hidden, eps, p);
  });
  LLMCORE_CUDA_CHECK_LAUNCH();
  return true;
}

}  // namespace llmcore::kernels
