// All-reduce microbenchmark on every visible GPU (2 or more), as decode steps use it: the step
// after each row-parallel layer of a tensor-parallel model, residual += all_reduce(x);
// x = rms_norm(residual) * w, on [rows, hidden] bf16 tensors, at every size with each all-reduce:
//   fused      Communicator::all_reduce_add_rms_norm (the LL kernel that does both)
//   ll         the LL all-reduce kernel, then add_rms_norm
//   two_phase  the two-phase one-shot kernel, then add_rms_norm
//   nccl       ncclAllReduce, then add_rms_norm
// (one communicator group each: LLMCORE_ONE_SHOT_LL_BYTES=8388608, =0, LLMCORE_CUSTOM_ALL_REDUCE=0),
// each all-reduce alone, and add_rms_norm alone. Sizes past 8 MiB are left out. Each rank's thread captures `reps` calls in a CUDA graph
// (decode steps replay graphs, so launch costs are those of graph nodes); the ranks replay
// together, rank 0 times its replay with CUDA events; the median of `trials` replays, per call.
// Prints one JSON object to stdout (benchmarks/all_reduce.py runs it and writes the record).
//
//   bench_all_reduce [--hidden 4096] [--reps 100] [--trials 9]
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/nccl_communicator.h"
#include "core/dtype.h"
#include "kernels/common/cuda_check.h"

using namespace llmcore;

namespace {

// A reusable barrier for the rank threads.
class SpinBarrier {
 public:
  explicit SpinBarrier(int n) : n_(n) {}
  void wait() {
    const int gen = generation_.load();
    if (arrived_.fetch_add(1) + 1 == n_) {
      arrived_.store(0);
      generation_.fetch_add(1);
    } else {
      while (generation_.load() == gen) std::this_thread::yield();
    }
  }

 private:
  const int n_;
  std::atomic<int> arrived_{0};
  std::atomic<int> generation_{0};
};

void on_ranks(int world, const std::function<void(int)>& fn) {
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) threads.emplace_back(fn, r);
  for (auto& t : threads) t.join();
}

Tensor random_device(CudaBackend& be, Shape shape, std::mt19937& rng, float lo, float hi) {
  Tensor h = Tensor::empty(shape, DType::kBF16);
  std::uniform_real_distribution<float> dist(lo, hi);
  for (int64_t i = 0; i < h.numel(); ++i) h.data_as<uint16_t>()[i] = float_to_bf16(dist(rng));
  Tensor d = be.empty(shape, DType::kBF16);
  be.copy(d, h);
  return d;
}

// Per-call ms of `op` on rank 0, every rank replaying a graph of `reps` calls at the same time.
double time_op(const std::vector<CudaBackend*>& backends, int reps, int trials,
               const std::function<void(int rank)>& op) {
  const int world = static_cast<int>(backends.size());
  SpinBarrier barrier(world);
  std::vector<double> ms;
  on_ranks(world, [&](int r) {
    CudaBackend& be = *backends[r];
    cuda::DeviceGuard guard(be.device_index());
    const cudaStream_t s = be.stream();
    for (int i = 0; i < 3; ++i) op(r);  // warm-up, eagerly
    be.synchronize();
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    LLMCORE_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < reps; ++i) op(r);
    LLMCORE_CUDA_CHECK(cudaStreamEndCapture(s, &graph));
    LLMCORE_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    cudaEvent_t a, b;
    LLMCORE_CUDA_CHECK(cudaEventCreate(&a));
    LLMCORE_CUDA_CHECK(cudaEventCreate(&b));
    for (int t = -1; t < trials; ++t) {  // trial -1 warms the graph up
      barrier.wait();
      LLMCORE_CUDA_CHECK(cudaEventRecord(a, s));
      LLMCORE_CUDA_CHECK(cudaGraphLaunch(exec, s));
      LLMCORE_CUDA_CHECK(cudaEventRecord(b, s));
      LLMCORE_CUDA_CHECK(cudaEventSynchronize(b));
      float e = 0;
      LLMCORE_CUDA_CHECK(cudaEventElapsedTime(&e, a, b));
      if (r == 0 && t >= 0) ms.push_back(e / reps);
    }
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
  });
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int hidden = 4096, reps = 100, trials = 9;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string f = argv[i];
    const int v = std::atoi(argv[i + 1]);
    if (f == "--hidden") hidden = v;
    else if (f == "--reps") reps = v;
    else if (f == "--trials") trials = v;
    else {
      std::fprintf(stderr, "unknown flag %s\n", f.c_str());
      return 2;
    }
  }
  const int world = cuda::device_count();
  if (world < 2) {
    std::fprintf(stderr, "bench_all_reduce needs 2 or more GPUs (%d visible)\n", world);
    return 2;
  }
  std::vector<std::unique_ptr<Backend>> owned;
  std::vector<CudaBackend*> backends;
  for (int r = 0; r < world; ++r) {
    owned.push_back(create_cuda_backend(r, DType::kBF16));
    backends.push_back(static_cast<CudaBackend*>(owned.back().get()));
  }
  setenv("LLMCORE_ONE_SHOT_LL_BYTES", "8388608", 1);
  auto ll = create_nccl_communicators(backends, 60);
  setenv("LLMCORE_ONE_SHOT_LL_BYTES", "0", 1);
  auto two_phase = create_nccl_communicators(backends, 60);
  unsetenv("LLMCORE_ONE_SHOT_LL_BYTES");
  setenv("LLMCORE_CUSTOM_ALL_REDUCE", "0", 1);
  auto nccl = create_nccl_communicators(backends, 60);
  unsetenv("LLMCORE_CUSTOM_ALL_REDUCE");

  cudaDeviceProp prop{};
  LLMCORE_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::string out = "{\"gpu\": \"" + std::string(prop.name) + "\", \"world\": " + std::to_string(world) +
                    ", \"hidden\": " + std::to_string(hidden) + ", \"reps\": " + std::to_string(reps) +
                    ", \"trials\": " + std::to_string(trials) + ", \"rows\": [";
  std::mt19937 rng(1);
  const float eps = 1e-5f;
  bool first = true;
  for (int64_t rows : {1, 8, 16, 32, 64, 128, 256}) {
    if (rows * hidden * 2 > (int64_t{8} << 20)) break;
    std::vector<Tensor> x(world), res(world), w(world);
    for (int r = 0; r < world; ++r) {
      x[r] = random_device(*backends[r], {rows, hidden}, rng, -1, 1);
      res[r] = random_device(*backends[r], {rows, hidden}, rng, -1, 1);
      w[r] = random_device(*backends[r], {hidden}, rng, 0.5f, 1.5f);
    }
    bool fused_ok = true;
    const double fused = time_op(backends, reps, trials, [&](int r) {
      if (!ll[r]->all_reduce_add_rms_norm(x[r], res[r], w[r], eps)) fused_ok = false;
    });
    std::string row = "{\"rows\": " + std::to_string(rows) + ", \"bytes\": " + std::to_string(rows * hidden * 2) +
                      ", \"fused_us\": " + (fused_ok ? std::to_string(fused * 1e3) : std::string("null"));
    const std::pair<const char*, std::vector<std::unique_ptr<parallel::Communicator>>*> groups[] = {
        {"ll", &ll}, {"two_phase", &two_phase}, {"nccl", &nccl}};
    for (const auto& [name, comms] : groups) {
      const double with_norm = time_op(backends, reps, trials, [&](int r) {
        (*comms)[r]->all_reduce_sum(x[r]);
        backends[r]->add_rms_norm(x[r], res[r], w[r], eps);
      });
      const double alone = time_op(backends, reps, trials, [&](int r) { (*comms)[r]->all_reduce_sum(x[r]); });
      row += std::string(", \"") + name + "_then_norm_us\": " + std::to_string(with_norm * 1e3) + ", \"" + name +
             "_us\": " + std::to_string(alone * 1e3);
    }
    const double norm = time_op(backends, reps, trials, [&](int r) { backends[r]->add_rms_norm(x[r], res[r], w[r], eps); });
    row += ", \"add_rms_norm_us\": " + std::to_string(norm * 1e3) + "}";
    out += (first ? "" : ", ") + row;
    first = false;
  }
  out += "]}";
  std::printf("%s\n", out.c_str());
  on_ranks(world, [&](int r) {
    ll[r].reset();
    two_phase[r].reset();
    nccl[r].reset();
  });
  return 0;
}
