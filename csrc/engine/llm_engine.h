// LLMEngine: requests in, incremental outputs out. A C++ thread runs the step loop
// (schedule -> execute -> sample -> stop checks -> detokenize) so no Python runs per step;
// callers add and abort requests from any thread and wait on the output queue.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "engine/block_manager.h"
#include "engine/executor.h"
#include "engine/sampling_params.h"
#include "engine/scheduler.h"
#include "engine/sequence.h"
#include "model/config.h"
#include "sampling/sampler.h"
#include "tokenizer/detokenizer.h"
#include "tokenizer/tokenizer.h"

namespace llmcore {

struct EngineConfig {
  std::string model;                  // checkpoint directory
  std::string tokenizer;              // tokenizer directory ("" = model)
  std::string device = "cpu";
  std::string dtype = "auto";
  int max_model_len = 0;              // 0: config's max_position_embeddings
  int max_num_seqs = 256;
  int max_num_batched_tokens = 0;     // 0: max(8192, max_model_len) 
  bool enable_prefix_caching = true;
  bool enable_chunked_prefill = true;
  int block_size = 16;
  int num_gpu_blocks_override = 0;    // 0: size the cache from memory
  double cpu_kv_cache_space_gib = 4;  // CPU backend: memory for the KV cache
  double gpu_memory_utilization = 0.9; // CUDA backend: share of device memory llmcore may use
  uint64_t seed = 0;
  std::string load_format = "auto";   // "auto" | "dummy"
  int num_threads = 0;
  bool enforce_eager = false;         // CUDA: no decode CUDA graphs (every step launches its kernels)
  int tensor_parallel_size = 1;       // ranks (GPUs 0..N-1, or CPU backends splitting the cores)
};

// One output position's logprobs: the chosen (or prompt) token first, then the top-k not
// already listed.
struct PositionLogprobs {
  std::vector<TokenLogprob> entries;
  std::vector<std::string> decoded;   // decoded text of each entry's token
};

// What changed in one sequence since the last delta.
struct SequenceDelta {
  int index = 0;
  std::vector<int32_t> token_ids;           // new tokens
  std::string text;                         // new text
  std::vector<PositionLogprobs> logprobs;   // per new token, when requested
  double cumulative_logprob = 0.0;
  bool finished = false;
  std::string finish_reason;                // "stop" | "length" | "abort" | ""
  int32_t stop_token = -1;                  // stop_reason when a token id
  std::string stop_str;                     // stop_reason when a string
  bool has_stop_str = false;
};

struct RequestDelta {
  std::string request_id;
  std::vector<SequenceDelta> seqs;
  // Sent once, in the delta where the prompt's last position was computed; [0] is empty (None).
  std::vector<PositionLogprobs> prompt_logprobs;
  bool has_prompt_logprobs = false;
  bool finished = false;                    // every sequence finished
  std::string error;                        // the request failed in the engine
  // Times in seconds since the epoch (0: not reached).
  double arrival_time = 0, first_scheduled_time = 0, first_token_time = 0, finished_time = 0;
  int num_cached_tokens = 0;
};

struct EngineStats {
  int num_running = 0;
  int num_waiting = 0;
  int num_total_blocks = 0;
  int num_free_blocks = 0;
  double kv_cache_usage = 0;
  int64_t num_preemptions = 0;
  int64_t prefix_cache_queries = 0;
  int64_t prefix_cache_hits = 0;
  int64_t num_prompt_tokens = 0;
  int64_t num_generation_tokens = 0;
  int64_t num_steps = 0;
  int64_t num_requests_finished = 0;
  int64_t num_requests_aborted = 0;   // of those finished, by abort_request (client gone, drain)
  // Host seconds spent in each phase of step(), summed over steps: scheduling; building inputs
  // and enqueueing the forward pass; sampling (on a GPU this includes waiting for the forward
  // pass); turning samples into outputs (stop checks, detokenization).
  double time_schedule_s = 0;
  double time_execute_s = 0;
  double time_sample_s = 0;
  double time_output_s = 0;
};

// Seconds the engine's constructor spent in its phases (cold start).
struct StartupTimes {
  double load_weights_s = 0;    // backend, weights read or drawn, uploaded
  double profile_s = 0;         // GPU: the profiling forward pass (and the GEMM plans it chooses)
  double capture_graphs_s = 0;  // GPU: decode CUDA graphs
};

class LLMEngine {
 public:
  explicit LLMEngine(const EngineConfig& config);
  ~LLMEngine();
  LLMEngine(const LLMEngine&) = delete;
  LLMEngine& operator=(const LLMEngine&) = delete;

  // Validates and queues a request. Throws ValueError (naming the problem) for an empty prompt,
  // token ids outside the vocabulary, invalid sampling params, a prompt + max_tokens over
  // max_model_len, a request that can never fit the KV cache, or a duplicate live request id.
  void add_request(const std::string& request_id, std::vector<int32_t> prompt_token_ids,
                   const SamplingParams& params);
  // Finishes the request with reason "abort" (its final delta is still delivered). Unknown or
  // already finished ids are ignored.
  void abort_request(const std::string& request_id);

  // Waits up to timeout_s (< 0: forever) for deltas and returns all queued ones.
  std::vector<RequestDelta> get_outputs(double timeout_s);
  bool has_unfinished_requests() const;
  EngineStats get_stats() const;
  // False once the step loop died (fatal error); error() says why.
  bool is_healthy() const { return healthy_.load(); }
  std::string error() const;
  // Stops the loop thread and frees the model and the KV cache; the engine accepts no more
  // requests (its stats and tokenizer stay readable).
  void shutdown();

  const Tokenizer& tokenizer() const { return *tokenizer_; }
  std::shared_ptr<Tokenizer> shared_tokenizer() const { return tokenizer_; }
  const ModelConfig& model_config() const { return model_config_; }
  const EngineConfig& config() const { return config_; }
  int max_model_len() const { return max_model_len_; }
  // Decode batch sizes replayed from CUDA graphs (empty on the CPU or with enforce_eager).
  std::vector<int> decode_graph_sizes() const;
  const StartupTimes& startup_times() const { return startup_times_; }
  const std::vector<int32_t>& eos_token_ids() const { return eos_token_ids_; }

 private:
  struct SeqState;
  struct Request;

  void loop();
  void step();
  void admit(std::unique_ptr<Request> req);
  void abort_now(const std::string& request_id);
  void fail_requests(const std::vector<Request*>& reqs, const std::string& message);
  void finish_seq(Request& req, SeqState& s, FinishReason reason);
  void append_token(Request& req, SeqState& s, const SampleResult& r, RequestDelta& delta);
  std::string decode_one(int32_t token_id) const;
  PositionLogprobs make_position(const TokenLogprob& chosen, const std::vector<TokenLogprob>& top) const;
  RequestDelta& delta_for(std::unordered_map<Request*, RequestDelta>& deltas, Request& req);
  void publish(std::vector<RequestDelta> deltas);
  void update_stats();
  void seed_sequence(Request& req, Sequence& seq);

  EngineConfig config_;
  ModelConfig model_config_;
  std::shared_ptr<Tokenizer> tokenizer_;
  std::vector<int32_t> eos_token_ids_;
  int max_model_len_ = 0;
  std::unique_ptr<Executor> executor_;
  std::unique_ptr<BlockManager> block_manager_;
  std::unique_ptr<Scheduler> scheduler_;

  // Owned by the loop thread.
  std::unordered_map<std::string, std::unique_ptr<Request>> requests_;
  std::unordered_map<const Sequence*, std::pair<Request*, SeqState*>> seq_index_;
  std::vector<RequestDelta> ready_;  // this iteration's deltas, published after the stats
  int64_t next_seq_id_ = 0;
  std::mt19937_64 seed_rng_;
  EngineStats counters_;
  StartupTimes startup_times_;

  // Shared with callers.
  mutable std::mutex in_mu_;
  std::condition_variable in_cv_;
  std::deque<std::unique_ptr<Request>> pending_;
  std::vector<std::string> pending_aborts_;
  std::unordered_set<std::string> live_ids_;
  bool stop_ = false;

  mutable std::mutex out_mu_;
  std::condition_variable out_cv_;
  std::deque<RequestDelta> outputs_;

  mutable std::mutex stats_mu_;
  EngineStats stats_;
  std::atomic<bool> healthy_{true};
  std::string error_;

  std::thread thread_;
};

}  // namespace llmcore
