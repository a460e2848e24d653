// Executor: owns the device side of one rank (backend, model weights, KV cache) and runs a
// SchedulerOutput: builds the step's input tensors on the host, copies them to the device, does
// the copy-on-write block copies, runs the forward pass and returns the requested logits rows on
// the host.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "engine/scheduler.h"
#include "model/model.h"
#include "sampling/sampler.h"

namespace llmcore {

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
  int num_threads = 0; // CPU backend threads, 0 = all cores
};

class Executor {
 public:
  Executor(const ExecutorConfig& config, const ModelConfig& model_config);
  ~Executor();

  // Bytes of KV cache one block takes across all layers (K and V).
  static size_t kv_block_bytes(const ModelConfig& model_config, int block_size, DType dtype);
  DType kv_dtype() const { return backend_->activation_dtype(); }

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
  // gpu_memory_utilization of the device's memory next to the weights and that peak.
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

  Backend& backend() { return *backend_; }

 private:
  Tensor to_device_i32(const std::vector<int32_t>& host, Shape shape);

  ExecutorConfig config_;
  ModelConfig model_config_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Model> model_;
  KVCache kv_cache_;
  std::unique_ptr<CudaSampler> cuda_sampler_;  // set for the CUDA backend
  std::unique_ptr<DecodeGraphs> decode_graphs_;  // set by capture_decode_graphs
};

}  // namespace llmcore
