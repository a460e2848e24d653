// Executor: owns the device side (backend, model weights, KV cache) and runs a SchedulerOutput:
// builds the step's input arrays on the host, copies them to the device, does the copy-on-write
// block copies, runs the forward pass and returns the requested logits rows.
//
// Tensor parallelism (tensor_parallel_size N > 1): N ranks, each with its own backend (GPU r, or a
// CPU backend with its share of the cores), communicator, weight shard, KV-cache shard (its KV
// heads) and decode graphs, driven by one worker thread per rank (parallel/worker_pool.h). Every
// step's input goes to all ranks; rank 0's logits (all-gathered) are the step's and rank 0 samples,
// so ranks never diverge. execute() returns once every rank has enqueued the step; sample()
// enqueues the sampling behind it and then waits for all ranks (as one GPU's stream order does
// without tensor parallelism). A rank that throws aborts the group: the others' collectives stop
// instead of waiting, and the step throws the failed rank's error.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "engine/scheduler.h"
#include "model/model.h"
#include "sampling/sampler.h"

namespace llmcore {

namespace parallel {
class WorkerPool;
}
class CudaSampler;
class DecodeGraphs;

// Which logits rows a scheduled sequence wants: rows of its chunk by offset within the chunk.
struct LogitsRequest {
  int first_row = 0;  // offset within the sequence's scheduled tokens
  int num_rows = 0;
};

struct ExecutorConfig {
  std::string model_dir;
  std::string device = "cpu";
  DType dtype = DType::kF32;  // activations, weights and KV cache (CPU: float32 only)
  LoadFormat load_format = LoadFormat::kAuto;
  uint64_t seed = 0;
  int block_size = 16;
  int num_blocks = 0;  // decided by the engine (from memory or an override)
  int num_threads = 0; // CPU backend threads, 0 = all cores (split between CPU ranks)
  int tensor_parallel_size = 1;
  double tp_step_timeout_s = 300;  // a rank whose step runs longer aborts the group (a hang)
  // Tell the model which rows are generated tokens (ForwardInput::row_kinds), so the CUDA backend
  // computes prompt rows and generated rows each with a GEMM chosen for them (cuBLASLt plans per
  // role, or the decode GEMM below); off: every row is computed the same way.
  bool generated_rows_apart = false;
  // With generated_rows_apart: generated rows through the decode GEMM (kernels/linear/skinny_gemm.cu)
  // rather than cuBLASLt. The engine decides (llm_engine.cpp, kDecodeGemmMaxSeqs).
  bool decode_gemm = false;
  // Test seam (LLMCORE_FAULT_INJECT="rank=R,step=N"): rank R throws in its N-th execute().
  int fault_rank = -1;
  int64_t fault_step = 0;
};

class Executor {
 public:
  Executor(const ExecutorConfig& config, const ModelConfig& model_config);
  ~Executor();

  // Bytes of KV cache one block takes across all layers (K and V) on one of `tp` ranks (its KV
  // heads).
  static size_t kv_block_bytes(const ModelConfig& model_config, int block_size, DType dtype, int tp = 1);
  DType kv_dtype() const;
  int tensor_parallel_size() const { return static_cast<int>(ranks_.size()); }

  // Allocates the KV cache of num_blocks blocks.
  void allocate_kv_cache(int num_blocks);

  // CUDA only (a no-op on the CPU): captures CUDA graphs of decode steps of up to max_batch
  // sequences (engine/decode_graphs.h), which execute() then replays for decode-only steps.
  // Needs the KV cache; call it again after reallocating the cache.
  void capture_decode_graphs(int max_batch, int max_model_len);
  // Batch sizes with a captured decode graph (empty: every step runs eagerly).
  std::vector<int> decode_graph_sizes() const;

  // GPU only: runs a forward pass of the largest step the scheduler can form
  // (max_num_batched_tokens tokens over up to max_num_seqs sequences, one logits row each) to
  // measure peak activation memory, then returns how many KV blocks fit in
  // gpu_memory_utilization of the device's memory next to the weights and that peak (the
  // fewest over the ranks' GPUs).
  int profile_num_kv_blocks(double gpu_memory_utilization, int max_num_batched_tokens, int max_num_seqs,
                            int max_model_len);

  // Runs one step. logits_requests[i] belongs to out.scheduled[i]. Returns logits [L, V] float32,
  // the rows in the order requested, on the backend's device (the host for the CPU backend): pass
  // pointers to its rows to sample().
  Tensor execute(const SchedulerOutput& out, const std::vector<LogitsRequest>& logits_requests);

  // Samples or scores rows of the last execute()'s logits (sampling/sampler.h's contract) where
  // they live: on the CPU with the reference sampler, on the GPU with the CUDA sampler, so only
  // ids and logprobs reach the host.
  std::vector<SampleResult> sample(const std::vector<SampleRequest>& rows, int vocab_size);

 private:
  struct Rank;
  struct StepInput;

  // Runs fn on every rank: inline when there is one, else on the ranks' worker threads, each
  // then waiting for its device work (collectives included) to finish, or (wait = false) leaving
  // it running until wait_ranks(). A rank that throws aborts the group (on_rank_error).
  void on_ranks(const std::function<void(Rank&)>& fn, bool wait = true);
  // Waits for the work on_ranks(..., false) left running, on every rank's thread.
  void wait_ranks();
  void synchronize_rank(Rank& rank);
  void on_rank_error(int rank, const std::exception& e);
  // Inside on_ranks: every rank waits here before enqueuing a step's collectives, so a rank that
  // fails while preparing the step leaves no peer stuck in one (parallel/worker_pool.h).
  void launch_barrier(Rank& rank);
  Tensor forward(Rank& rank, const StepInput& in);

  ExecutorConfig config_;
  ModelConfig model_config_;
  std::vector<std::unique_ptr<Rank>> ranks_;
  std::unique_ptr<parallel::WorkerPool> pool_;  // tensor_parallel_size > 1
  std::unique_ptr<CudaSampler> cuda_sampler_;   // rank 0's, for the CUDA backend
  bool ranks_busy_ = false;                     // on_ranks(..., false) left work to wait_ranks()
};

}  // namespace llmcore
