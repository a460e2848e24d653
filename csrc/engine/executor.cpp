#include "engine/executor.h"

#include <algorithm>
#include <thread>

#include "core/error.h"
#include "parallel/communicator.h"
#include "parallel/sharding.h"
#include "parallel/worker_pool.h"

#ifdef LLMCORE_WITH_CUDA
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_sampler.h"
#include "engine/decode_graphs.h"
#ifdef LLMCORE_WITH_NCCL
#include "backend/cuda/nccl_communicator.h"
#endif
#else
namespace llmcore {
// No CUDA backend in this build: these pointers stay empty.
class CudaSampler {};
class DecodeGraphs {};
}  // namespace llmcore
#endif

namespace llmcore {

// One tensor-parallel rank (the whole model when there is one).
struct Executor::Rank {
  int index = 0;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<parallel::Communicator> comm;  // null when tensor_parallel_size is 1
  std::unique_ptr<Model> model;
  KVCache kv_cache;
  std::unique_ptr<DecodeGraphs> decode_graphs;  // set by capture_decode_graphs
  int64_t steps = 0;                            // execute() calls (the fault seam counts them)

  ~Rank() {
    decode_graphs.reset();  // graphs hold the communicator's kernels and the cache's addresses
    kv_cache = KVCache{};
    model.reset();
    comm.reset();
  }

  void allocate_kv_cache(int num_blocks, int block_size, const ModelConfig& c, int tp) {
    decode_graphs.reset();  // they point into the old cache
    const DType dtype = backend->activation_dtype();
    kv_cache = KVCache{};
    kv_cache.num_blocks = num_blocks;
    kv_cache.block_size = block_size;
    const int64_t kv_heads = parallel::rank_dims(c, tp, index).num_kv_heads;
    const Shape shape = {num_blocks, kv_heads, block_size, c.head_dim};
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      kv_cache.k.push_back(backend->empty(shape, dtype));
      kv_cache.v.push_back(backend->empty(shape, dtype));
    }
  }
};

// One step's input arrays on the host, built once and copied to every rank's device. They are
// written straight into one buffer, each at a 64-byte aligned offset: one upload per rank.
struct Executor::StepInput {
  RowKinds row_kinds, logits_row_kinds;  // generated-token rows: positions past the prompt
  int num_seqs = 0, num_tokens = 0, num_logits = 0, max_query_len = 0, min_query_len = 1, max_seq_len = 0;
  int64_t max_blocks = 1;
  enum Part { kTokenIds, kPositions, kSlots, kSeqLens, kLogitsRows, kQueryStart, kBlockTables, kNumParts };
  std::vector<int32_t> packed;
  int64_t offset[kNumParts] = {};

  StepInput(const SchedulerOutput& out, const std::vector<LogitsRequest>& logits_requests, int block_size,
            bool generated_rows_apart) {
    LLMCORE_CHECK(logits_requests.size() == out.scheduled.size());
    num_seqs = static_cast<int>(out.scheduled.size());
    num_tokens = out.num_batched_tokens;
    // The sizes first (checked), then every array in place.
    size_t widest = 1;
    int64_t rows = 0;
    for (int i = 0; i < num_seqs; ++i) {
      const ScheduledSequence& s = out.scheduled[i];
      const LogitsRequest& lr = logits_requests[i];
      LLMCORE_CHECK(lr.first_row >= 0 && lr.first_row + lr.num_rows <= s.num_tokens);
      widest = std::max(widest, s.seq->block_table.size());
      rows += std::max(s.num_tokens, 0);
      num_logits += std::max(lr.num_rows, 0);
    }
    LLMCORE_CHECK(rows == num_tokens, "scheduled tokens ", rows, " != num_batched_tokens ", num_tokens);
    max_blocks = static_cast<int64_t>(widest);
    const int64_t sizes[kNumParts] = {num_tokens, num_tokens, num_tokens, num_seqs,
                                      num_logits, num_seqs + 1, num_seqs * max_blocks};
    constexpr int64_t kAlign = 16;  // int32s: 64 bytes
    int64_t total = 0;
    for (int p = 0; p < kNumParts; ++p) {
      offset[p] = total;
      total += (sizes[p] + kAlign - 1) / kAlign * kAlign;
    }
    packed.assign(static_cast<size_t>(total), 0);
    int32_t* const token_ids = at(kTokenIds);
    int32_t* const positions = at(kPositions);
    int32_t* const slots = at(kSlots);
    int32_t* const seq_lens = at(kSeqLens);
    int32_t* const logits_rows = at(kLogitsRows);
    int32_t* const query_start_loc = at(kQueryStart);
    int32_t* const block_tables = at(kBlockTables);
    std::fill(block_tables, block_tables + num_seqs * max_blocks, -1);
    query_start_loc[0] = 0;
    std::vector<bool> generated, generated_logits;  // filled only when the model is told the kinds
    if (generated_rows_apart) generated.reserve(num_tokens);
    int row = 0, logits_row = 0;
    for (int i = 0; i < num_seqs; ++i) {
      const ScheduledSequence& s = out.scheduled[i];
      const Sequence& seq = *s.seq;
      const int start = seq.num_computed_tokens;
      const int row0 = row;
      LLMCORE_CHECK(start + s.num_tokens <= seq.num_tokens());
      LLMCORE_CHECK(static_cast<size_t>((start + s.num_tokens + block_size - 1) / block_size) <=
                    seq.block_table.size(), "sequence ", seq.seq_id, " has too few blocks");
      for (int p = start; p < start + s.num_tokens; ++p, ++row) {
        token_ids[row] = seq.token_ids[p];
        positions[row] = p;
        slots[row] = seq.block_table[p / block_size] * block_size + p % block_size;
        if (generated_rows_apart) generated.push_back(p >= seq.num_prompt_tokens);
      }
      query_start_loc[i + 1] = row;
      seq_lens[i] = start + s.num_tokens;
      std::copy(seq.block_table.begin(), seq.block_table.end(), block_tables + i * max_blocks);
      max_query_len = std::max(max_query_len, s.num_tokens);
      min_query_len = i == 0 ? s.num_tokens : std::min(min_query_len, s.num_tokens);
      max_seq_len = std::max(max_seq_len, start + s.num_tokens);
      const LogitsRequest& lr = logits_requests[i];
      for (int r = 0; r < lr.num_rows; ++r) {
        logits_rows[logits_row++] = row0 + lr.first_row + r;
        if (generated_rows_apart) generated_logits.push_back(generated[static_cast<size_t>(row0 + lr.first_row + r)]);
      }
    }
    if (generated_rows_apart) {
      row_kinds = RowKinds::from_flags(generated);
      logits_row_kinds = RowKinds::from_flags(generated_logits);
    }
  }

  int32_t* at(Part p) { return packed.data() + offset[p]; }

  // Part p of the uploaded buffer `all` as a tensor of `shape`.
  Tensor part(const Tensor& all, Part p, Shape shape) const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return all.narrow_rows(offset[p], n).view(std::move(shape));
  }
};

Executor::Executor(const ExecutorConfig& config, const ModelConfig& model_config)
    : config_(config), model_config_(model_config) {
  const int tp = config.tensor_parallel_size;
  LLMCORE_CHECK_ARG(tp >= 1, "tensor_parallel_size must be >= 1; got ", tp);
  parallel::check_tensor_parallel(model_config_, tp);
  if (config.device == "cuda") {
#ifdef LLMCORE_WITH_CUDA
    const int gpus = cuda::device_count();
    LLMCORE_CHECK_ARG(gpus > 0, "device='cuda' but no CUDA device is available");
    LLMCORE_CHECK_ARG(gpus >= tp, "tensor_parallel_size=", tp, " needs ", tp, " GPUs; ", gpus,
                      " visible (CUDA_VISIBLE_DEVICES picks them)");
#ifndef LLMCORE_WITH_NCCL
    LLMCORE_CHECK_ARG(tp == 1, "tensor_parallel_size > 1 on GPUs needs NCCL, which this build does not "
                      "include (install nvidia-nccl-cu13 and rebuild)");
#endif
#else
    throw_value_error("device='cuda' needs the CUDA backend, which this build does not include "
                      "(build with the CUDA toolkit and cuBLAS installed)");
#endif
  } else if (config.device != "cpu") {
    throw_value_error("device must be 'cpu' or 'cuda'; got '", config.device, "'");
  }
  for (int r = 0; r < tp; ++r) {
    ranks_.push_back(std::make_unique<Rank>());
    ranks_.back()->index = r;
  }
  if (tp > 1) pool_ = std::make_unique<parallel::WorkerPool>(tp, /*spin=*/config.device == "cuda");

  // Backends, each made by the thread that will drive it.
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int cpu_threads = config.num_threads > 0 ? config.num_threads : cores;
  on_ranks([&](Rank& rank) {
    if (config.device == "cpu") {
      rank.backend = create_cpu_backend(tp == 1 ? config.num_threads : std::max(1, cpu_threads / tp));
    } else {
#ifdef LLMCORE_WITH_CUDA
      rank.backend = create_cuda_backend(rank.index, config.dtype);
      dynamic_cast<CudaBackend&>(*rank.backend).set_decode_gemm(config.generated_rows_apart && config.decode_gemm);
#endif
    }
  });
  if (tp > 1) {
    std::vector<std::unique_ptr<parallel::Communicator>> comms;
    if (config.device == "cpu") {
      comms = parallel::create_thread_communicators(tp);
    } else {
#if defined(LLMCORE_WITH_CUDA) && defined(LLMCORE_WITH_NCCL)
      std::vector<CudaBackend*> backends;
      for (auto& rank : ranks_) backends.push_back(dynamic_cast<CudaBackend*>(rank->backend.get()));
      comms = create_nccl_communicators(backends, config.tp_step_timeout_s);
#endif
    }
    for (int r = 0; r < tp; ++r) ranks_[r]->comm = std::move(comms[r]);
  }
  // The ranks read their shards in parallel.
  on_ranks([&](Rank& rank) {
    const TensorParallel shard{rank.index, tp, rank.comm.get()};
    rank.model = create_model(model_config_, config.model_dir, *rank.backend, config.load_format, config.seed, shard);
  });
#ifdef LLMCORE_WITH_CUDA
  if (auto* cuda = dynamic_cast<CudaBackend*>(ranks_[0]->backend.get())) cuda_sampler_ = std::make_unique<CudaSampler>(*cuda);
#endif
}

Executor::~Executor() {
  // Some rank's thread may be stuck in a device call that will not return (a failed step left it
  // behind): its state, and the pool whose thread it is, cannot be freed safely. Leaked; the
  // process is expected to exit.
  auto leak = [&] {
    for (auto& rank : ranks_) (void)rank.release();
    (void)cuda_sampler_.release();
    (void)pool_.release();
  };
  if (pool_) {
    try {
      wait_ranks();  // a step nobody sampled
    } catch (const std::exception&) {
    }
  }
  if (pool_ && pool_->wedged()) {
    leak();
    return;
  }
  cuda_sampler_.reset();  // it uses rank 0's backend
  // Each rank's device state goes away on the thread that drove it, all ranks at once (the NCCL
  // communicators are destroyed together), also after a failure.
  if (pool_) {
    try {
      pool_->run([&](int r) { ranks_[r].reset(); }, [](int, const std::exception&) {});
    } catch (const std::exception&) {
    }
    if (pool_->wedged()) {
      leak();
      return;
    }
  }
  ranks_.clear();
  pool_.reset();
}

void Executor::on_ranks(const std::function<void(Rank&)>& fn, bool wait) {
  if (!pool_) {
    fn(*ranks_[0]);
    return;
  }
  // Once the communicators exist, a failure aborts the group for good.
  parallel::Communicator* comm0 = ranks_[0]->comm.get();
  LLMCORE_CHECK(comm0 == nullptr || !comm0->group().aborted(), "the tensor-parallel group failed earlier (",
                comm0->group().reason(), ")");
  wait_ranks();  // the last step first
  try {
    pool_->run(
        [&](int r) {
          Rank& rank = *ranks_[r];
          fn(rank);
          if (wait && rank.comm) rank.comm->synchronize();
        },
        [&](int r, const std::exception& e) { on_rank_error(r, e); });
  } catch (const std::exception&) {
    // Ranks that enqueued their part without waiting may now wait for the failed one: each cuts
    // its collectives short (Communicator::synchronize) before the error goes up.
    if (!wait && !pool_->wedged()) {
      try {
        pool_->run([&](int r) { synchronize_rank(*ranks_[r]); }, [](int, const std::exception&) {});
      } catch (const std::exception&) {
      }
    }
    throw;
  }
  ranks_busy_ = !wait;
}

void Executor::wait_ranks() {
  if (!ranks_busy_) return;
  ranks_busy_ = false;
  pool_->run([&](int r) { synchronize_rank(*ranks_[r]); },
             [&](int r, const std::exception& e) { on_rank_error(r, e); });
}

void Executor::synchronize_rank(Rank& rank) {
  if (rank.comm) rank.comm->synchronize();
}

void Executor::on_rank_error(int r, const std::exception& e) {
  parallel::Communicator* comm = ranks_[r]->comm.get();
  if (comm == nullptr) return;
  comm->abort(str_cat("rank ", r, " failed: ", e.what()));
  try {
    comm->synchronize();  // what this rank enqueued before failing finishes or is cut short
  } catch (const std::exception&) {
  }
}

void Executor::launch_barrier(Rank& rank) {
  if (pool_) pool_->barrier(rank.index);
}

DType Executor::kv_dtype() const { return ranks_[0]->backend->activation_dtype(); }

std::vector<SampleResult> Executor::sample(const std::vector<SampleRequest>& rows, int vocab_size) {
#ifdef LLMCORE_WITH_CUDA
  // The sampling kernels queue behind the step on rank 0's stream; then every rank is waited for.
  if (cuda_sampler_) return cuda_sampler_->sample(rows, vocab_size, [&] { wait_ranks(); });
#endif
  wait_ranks();
  return llmcore::sample(rows, vocab_size);
}

size_t Executor::kv_block_bytes(const ModelConfig& c, int block_size, DType dtype, int tp) {
  const int64_t kv_heads = parallel::rank_dims(c, tp, 0).num_kv_heads;
  return 2 * static_cast<size_t>(c.num_hidden_layers) * kv_heads * block_size * c.head_dim * dtype_size(dtype);
}

void Executor::allocate_kv_cache(int num_blocks) {
  const int tp = tensor_parallel_size();
  on_ranks([&](Rank& rank) { rank.allocate_kv_cache(num_blocks, config_.block_size, model_config_, tp); });
}

void Executor::capture_decode_graphs(int max_batch, int max_model_len) {
#ifdef LLMCORE_WITH_CUDA
  if (dynamic_cast<CudaBackend*>(ranks_[0]->backend.get()) == nullptr) return;
  // All ranks at once: the warm-up passes before each capture run the collectives.
  on_ranks([&](Rank& rank) {
    auto* cuda = dynamic_cast<CudaBackend*>(rank.backend.get());
    rank.decode_graphs.reset();
    rank.decode_graphs = std::make_unique<DecodeGraphs>(*cuda, *rank.model, rank.kv_cache, config_.block_size,
                                                        max_model_len, max_batch, config_.generated_rows_apart);
  });
#else
  (void)max_batch;
  (void)max_model_len;
#endif
}

std::vector<int> Executor::decode_graph_sizes() const {
#ifdef LLMCORE_WITH_CUDA
  if (ranks_[0]->decode_graphs) return ranks_[0]->decode_graphs->buckets();
#endif
  return {};
}

Tensor Executor::forward(Rank& rank, const StepInput& s) {
  // One copy to the device; the inputs are views of it (they share its storage).
  const Tensor all = rank.backend->upload(Tensor::wrap(const_cast<int32_t*>(s.packed.data()),
                                                       {static_cast<int64_t>(s.packed.size())}, DType::kI32));
  ForwardInput in;
  in.token_ids = s.part(all, StepInput::kTokenIds, {s.num_tokens});
  in.positions = s.part(all, StepInput::kPositions, {s.num_tokens});
  in.logits_indices = s.part(all, StepInput::kLogitsRows, {s.num_logits});
  in.attn.num_seqs = s.num_seqs;
  in.attn.max_query_len = s.max_query_len;
  in.attn.min_query_len = s.min_query_len;
  in.attn.max_seq_len = s.max_seq_len;
  in.attn.query_start_loc = s.part(all, StepInput::kQueryStart, {s.num_seqs + 1});
  in.attn.seq_lens = s.part(all, StepInput::kSeqLens, {s.num_seqs});
  in.attn.block_tables = s.part(all, StepInput::kBlockTables, {s.num_seqs, s.max_blocks});
  in.attn.slot_mapping = s.part(all, StepInput::kSlots, {s.num_tokens});
  in.row_kinds = s.row_kinds;
  in.logits_row_kinds = s.logits_row_kinds;
  return rank.model->forward(in, rank.kv_cache);
}

Tensor Executor::execute(const SchedulerOutput& out, const std::vector<LogitsRequest>& logits_requests) {
  LLMCORE_CHECK(logits_requests.size() == out.scheduled.size());
  std::vector<std::pair<int, int>> copies;
  for (const BlockCopy& c : out.block_copies) copies.emplace_back(c.src, c.dst);
  bool graphed = false;
#ifdef LLMCORE_WITH_CUDA
  graphed = ranks_[0]->decode_graphs && ranks_[0]->decode_graphs->can_run(out, logits_requests);
#endif
  std::unique_ptr<StepInput> input;
  if (!graphed)
    input = std::make_unique<StepInput>(out, logits_requests, config_.block_size, config_.generated_rows_apart);
  Tensor logits;
  // Every rank enqueues its part and returns without waiting for it: sample() enqueues the
  // sampling behind it and then waits for all ranks, so the GPUs never idle between the two.
  on_ranks([&](Rank& rank) {
    if (rank.index == config_.fault_rank && ++rank.steps == config_.fault_step) {
      throw std::runtime_error("fault injected at step " + std::to_string(config_.fault_step) +
                               " (LLMCORE_FAULT_INJECT)");
    }
    if (!copies.empty()) rank.backend->copy_kv_blocks(rank.kv_cache, copies);
    launch_barrier(rank);
    Tensor l;
#ifdef LLMCORE_WITH_CUDA
    if (graphed) l = rank.decode_graphs->run(out);
#endif
    if (!graphed) l = forward(rank, *input);
    if (rank.index == 0) logits = l;
  }, /*wait=*/false);
  return logits;
}

int Executor::profile_num_kv_blocks(double gpu_memory_utilization, int max_num_batched_tokens,
                                    int max_num_seqs, int max_model_len) {
#ifdef LLMCORE_WITH_CUDA
  LLMCORE_CHECK(dynamic_cast<CudaBackend*>(ranks_[0]->backend.get()) != nullptr,
                "profile_num_kv_blocks needs the CUDA backend");
  const int block_size = config_.block_size;
  const int num_tokens = std::max(1, max_num_batched_tokens);
  const int num_seqs = std::max(1, std::min({max_num_seqs, num_tokens}));
  // Sequences of near-equal length, each no longer than max_model_len.
  const int per_seq = std::min((num_tokens + num_seqs - 1) / num_seqs, max_model_len);
  const int blocks_per_seq = (per_seq + block_size - 1) / block_size;

  std::vector<Sequence> seqs(num_seqs);
  SchedulerOutput out;
  std::vector<LogitsRequest> lrs;
  int left = num_tokens;
  for (int i = 0; i < num_seqs && left > 0; ++i) {
    Sequence& seq = seqs[i];
    const int n = std::min(per_seq, left);
    left -= n;
    seq.token_ids.assign(n, 0);
    seq.num_prompt_tokens = n;
    for (int b = 0; b < blocks_per_seq; ++b) seq.block_table.push_back(i * blocks_per_seq + b);
    out.scheduled.push_back({&seq, n, true});
    out.num_batched_tokens += n;
    lrs.push_back({n - 1, 1});
  }
  const StepInput input(out, lrs, block_size, config_.generated_rows_apart);
  const int tp = tensor_parallel_size();
  const double block_bytes = static_cast<double>(kv_block_bytes(model_config_, block_size, kv_dtype(), tp));
  std::vector<int> blocks(ranks_.size(), 0);
  on_ranks([&](Rank& rank) {
    auto* cuda = dynamic_cast<CudaBackend*>(rank.backend.get());
    rank.allocate_kv_cache(num_seqs * blocks_per_seq, block_size, model_config_, tp);
    cuda->synchronize();
    cuda->reset_peak_memory_stats();
    launch_barrier(rank);
    forward(rank, input);
    if (rank.comm) rank.comm->synchronize();
    cuda->synchronize();
    // Peak bytes handed out during the step: this engine's weights, the profiling cache and the
    // activations (cached free blocks of engines already gone are not counted: they are reusable).
    const size_t peak_in_use = cuda->memory_stats().peak_in_use_bytes;
    rank.kv_cache = KVCache{};  // the profiling cache goes back to the allocator
    const size_t reserved_now = cuda->memory_stats().reserved_bytes;
    const cuda::MemoryInfo mem = cuda->memory_info();
    // Device memory used by everything but our allocator (context, cuBLAS workspace, NCCL
    // buffers, other processes) stays used.
    const double used_elsewhere = static_cast<double>(mem.total_bytes - mem.free_bytes) - reserved_now;
    const double budget =
        gpu_memory_utilization * static_cast<double>(mem.total_bytes) - used_elsewhere - peak_in_use;
    blocks[rank.index] = budget <= 0 ? 0 : static_cast<int>(budget / block_bytes);
  });
  return *std::min_element(blocks.begin(), blocks.end());
#else
  (void)gpu_memory_utilization; (void)max_num_batched_tokens; (void)max_num_seqs; (void)max_model_len;
  throw_runtime_error("profile_num_kv_blocks needs the CUDA backend");
#endif
}

}  // namespace llmcore
