#include "engine/executor.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

#ifdef LLMCORE_WITH_CUDA
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_sampler.h"
#include "engine/decode_graphs.h"
#else
namespace llmcore {
// No CUDA backend in this build: these pointers stay empty.
class CudaSampler {};
class DecodeGraphs {};
}  // namespace llmcore
#endif

namespace llmcore {

Executor::Executor(const ExecutorConfig& config, const ModelConfig& model_config)
    : config_(config), model_config_(model_config) {
  if (config.device == "cpu") {
    backend_ = create_cpu_backend(config.num_threads);
  } else if (config.device == "cuda") {
#ifdef LLMCORE_WITH_CUDA
    LLMCORE_CHECK_ARG(cuda::device_count() > 0, "device='cuda' but no CUDA device is available");
    backend_ = create_cuda_backend(0, config.dtype);
#else
    throw_value_error("device='cuda' needs the CUDA backend, which this build does not include "
                      "(build with the CUDA toolkit and cuBLAS installed)");
#endif
  } else {
    throw_value_error("device must be 'cpu' or 'cuda'; got '", config.device, "'");
  }
  model_ = create_model(model_config_, config.model_dir, *backend_, config.load_format, config.seed);
#ifdef LLMCORE_WITH_CUDA
  if (auto* cuda = dynamic_cast<CudaBackend*>(backend_.get())) cuda_sampler_ = std::make_unique<CudaSampler>(*cuda);
#endif
}

Executor::~Executor() = default;

std::vector<SampleResult> Executor::sample(const std::vector<SampleRequest>& rows, int vocab_size) {
#ifdef LLMCORE_WITH_CUDA
  if (cuda_sampler_) return cuda_sampler_->sample(rows, vocab_size);
#endif
  return llmcore::sample(rows, vocab_size);
}

size_t Executor::kv_block_bytes(const ModelConfig& c, int block_size, DType dtype) {
  return 2 * static_cast<size_t>(c.num_hidden_layers) * c.num_key_value_heads * block_size *
         c.head_dim * dtype_size(dtype);
}

void Executor::allocate_kv_cache(int num_blocks) {
  decode_graphs_.reset();  // they point into the old cache
  const DType dtype = backend_->activation_dtype();
  kv_cache_ = KVCache{};
  kv_cache_.num_blocks = num_blocks;
  kv_cache_.block_size = config_.block_size;
  const Shape shape = {num_blocks, model_config_.num_key_value_heads, config_.block_size,
                       model_config_.head_dim};
  for (int64_t l = 0; l < model_config_.num_hidden_layers; ++l) {
    kv_cache_.k.push_back(backend_->empty(shape, dtype));
    kv_cache_.v.push_back(backend_->empty(shape, dtype));
  }
}

void Executor::capture_decode_graphs(int max_batch, int max_model_len) {
#ifdef LLMCORE_WITH_CUDA
  auto* cuda = dynamic_cast<CudaBackend*>(backend_.get());
  if (cuda == nullptr) return;
  decode_graphs_.reset();
  decode_graphs_ = std::make_unique<DecodeGraphs>(*cuda, *model_, kv_cache_, config_.block_size,
                                                  max_model_len, max_batch);
#else
  (void)max_batch;
  (void)max_model_len;
#endif
}

std::vector<int> Executor::decode_graph_sizes() const {
#ifdef LLMCORE_WITH_CUDA
  if (decode_graphs_) return decode_graphs_->buckets();
#endif
  return {};
}

Tensor Executor::to_device_i32(const std::vector<int32_t>& host, Shape shape) {
  Tensor h = Tensor::wrap(const_cast<int32_t*>(host.data()), std::move(shape), DType::kI32);
  if (backend_->device() == Device::kCPU) {
    Tensor d = Tensor::empty(h.shape(), DType::kI32);
    if (h.nbytes()) std::memcpy(d.data(), h.data(), h.nbytes());
    return d;
  }
  Tensor d = backend_->empty(h.shape(), DType::kI32);
  backend_->copy(d, h);
  return d;
}

Tensor Executor::execute(const SchedulerOutput& out, const std::vector<LogitsRequest>& logits_requests) {
  LLMCORE_CHECK(logits_requests.size() == out.scheduled.size());
  if (!out.block_copies.empty()) {
    std::vector<std::pair<int, int>> pairs;
    for (const BlockCopy& c : out.block_copies) pairs.emplace_back(c.src, c.dst);
    backend_->copy_kv_blocks(kv_cache_, pairs);
  }
#ifdef LLMCORE_WITH_CUDA
  if (decode_graphs_ && decode_graphs_->can_run(out, logits_requests)) return decode_graphs_->run(out);
#endif
  const int block_size = config_.block_size;
  const int num_seqs = static_cast<int>(out.scheduled.size());
  const int num_tokens = out.num_batched_tokens;

  size_t max_blocks = 1;
  for (const ScheduledSequence& s : out.scheduled) max_blocks = std::max(max_blocks, s.seq->block_table.size());

  std::vector<int32_t> token_ids, positions, slots, seq_lens, logits_rows;
  std::vector<int32_t> query_start_loc = {0};
  std::vector<int32_t> block_tables(static_cast<size_t>(num_seqs) * max_blocks, -1);
  token_ids.reserve(num_tokens);
  positions.reserve(num_tokens);
  slots.reserve(num_tokens);
  int max_query_len = 0, max_seq_len = 0;
  for (int i = 0; i < num_seqs; ++i) {
    const ScheduledSequence& s = out.scheduled[i];
    const Sequence& seq = *s.seq;
    const int start = seq.num_computed_tokens;
    const int row0 = static_cast<int>(token_ids.size());
    LLMCORE_CHECK(start + s.num_tokens <= seq.num_tokens());
    LLMCORE_CHECK(static_cast<size_t>((start + s.num_tokens + block_size - 1) / block_size) <=
                  seq.block_table.size(), "sequence ", seq.seq_id, " has too few blocks");
    for (int p = start; p < start + s.num_tokens; ++p) {
      token_ids.push_back(seq.token_ids[p]);
      positions.push_back(p);
      slots.push_back(seq.block_table[p / block_size] * block_size + p % block_size);
    }
    query_start_loc.push_back(static_cast<int32_t>(token_ids.size()));
    seq_lens.push_back(start + s.num_tokens);
    std::copy(seq.block_table.begin(), seq.block_table.end(), block_tables.begin() + i * max_blocks);
    max_query_len = std::max(max_query_len, s.num_tokens);
    max_seq_len = std::max(max_seq_len, start + s.num_tokens);
    const LogitsRequest& lr = logits_requests[i];
    LLMCORE_CHECK(lr.first_row >= 0 && lr.first_row + lr.num_rows <= s.num_tokens);
    for (int r = 0; r < lr.num_rows; ++r) logits_rows.push_back(row0 + lr.first_row + r);
  }
  LLMCORE_CHECK(static_cast<int>(token_ids.size()) == num_tokens);


  ForwardInput in;
  in.token_ids = to_device_i32(token_ids, {num_tokens});
  in.positions = to_device_i32(positions, {num_tokens});
  in.logits_indices = to_device_i32(logits_rows, {static_cast<int64_t>(logits_rows.size())});
  in.attn.num_seqs = num_seqs;
  in.attn.max_query_len = max_query_len;
  in.attn.max_seq_len = max_seq_len;
  in.attn.query_start_loc = to_device_i32(query_start_loc, {num_seqs + 1});
  in.attn.seq_lens = to_device_i32(seq_lens, {num_seqs});
  in.attn.block_tables = to_device_i32(block_tables, {num_seqs, static_cast<int64_t>(max_blocks)});
  in.attn.slot_mapping = to_device_i32(slots, {num_tokens});

  return model_->forward(in, kv_cache_);
}

int Executor::profile_num_kv_blocks(double gpu_memory_utilization, int max_num_batched_tokens,
                                    int max_num_seqs, int max_model_len) {
#ifdef LLMCORE_WITH_CUDA
  auto* cuda = dynamic_cast<CudaBackend*>(backend_.get());
  LLMCORE_CHECK(cuda != nullptr, "profile_num_kv_blocks needs the CUDA backend");
  const int block_size = config_.block_size;
  const int num_tokens = std::max(1, max_num_batched_tokens);
  const int num_seqs = std::max(1, std::min({max_num_seqs, num_tokens}));
  // Sequences of near-equal length, each no longer than max_model_len.
  const int per_seq = std::min((num_tokens + num_seqs - 1) / num_seqs, max_model_len);
  const int blocks_per_seq = (per_seq + block_size - 1) / block_size;
  allocate_kv_cache(num_seqs * blocks_per_seq);

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
  cuda->synchronize();
  cuda->reset_peak_memory_stats();
  execute(out, lrs);
  cuda->synchronize();
  // Peak bytes handed out during the step: this engine's weights, the profiling cache and the
  // activations (cached free blocks of engines already gone are not counted: they are reusable).
  const size_t peak_in_use = cuda->memory_stats().peak_in_use_bytes;
  kv_cache_ = KVCache{};  // the profiling cache goes back to the allocator
  const size_t reserved_now = cuda->memory_stats().reserved_bytes;
  const cuda::MemoryInfo mem = cuda->memory_info();
  // Device memory used by everything but our allocator (context, cuBLAS workspace, other
  // processes) stays used.
  const double used_elsewhere = static_cast<double>(mem.total_bytes - mem.free_bytes) - reserved_now;
  const double budget =
      gpu_memory_utilization * static_cast<double>(mem.total_bytes) - used_elsewhere - peak_in_use;
  const double block_bytes = static_cast<double>(kv_block_bytes(model_config_, block_size, kv_dtype()));
  return budget <= 0 ? 0 : static_cast<int>(budget / block_bytes);
#else
  (void)gpu_memory_utilization; (void)max_num_batched_tokens; (void)max_num_seqs; (void)max_model_len;
  throw_runtime_error("profile_num_kv_blocks needs the CUDA backend");
#endif
}

}  // namespace llmcore
