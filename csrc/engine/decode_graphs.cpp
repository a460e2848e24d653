#include "engine/decode_graphs.h"

#ifdef LLMCORE_WITH_CUDA

#include <algorithm>

#include "backend/cuda/cuda_allocator.h"
#include "core/error.h"
#include "engine/executor.h"
#include "kernels/attention/attention.h"
#include "kernels/common/cuda_check.h"

namespace llmcore {
namespace {

// Offsets (in ints) of the small arrays in the persistent buffer, each `stride` long.
enum Array : int { kTokens = 0, kPositions, kSlots, kLogitsRows, kSeqLens, kQueryStart, kNumArrays };

std::vector<int> make_buckets(int max_batch) {
  std::vector<int> b;
  for (int x : {1, 2, 4}) b.push_back(x);
  for (int x = 8; x <= 64; x += 8) b.push_back(x);
  for (int x = 80; x <= 512; x += 16) b.push_back(x);
  b.erase(std::remove_if(b.begin(), b.end(), [&](int x) { return x >= max_batch; }), b.end());
  b.push_back(max_batch);
  return b;
}

}  // namespace

DecodeGraphs::DecodeGraphs(CudaBackend& backend, Model& model, KVCache& kv_cache, int block_size,
                           int max_model_len, int max_batch, bool generated_rows_apart)
    : backend_(backend),
      model_(model),
      kv_cache_(kv_cache),
      block_size_(block_size),
      generated_rows_apart_(generated_rows_apart),
      max_model_len_(max_model_len),
      max_blocks_((max_model_len + block_size - 1) / block_size) {
  LLMCORE_CHECK(max_batch >= 1 && block_size >= 1 && max_model_len >= 1, "decode graphs: max_batch ",
                max_batch, ", block_size ", block_size, ", max_model_len ", max_model_len);
  LLMCORE_CHECK(kv_cache.num_blocks >= 1, "decode graphs need the KV cache allocated");
  max_batch_ = max_batch;
  buckets_ = make_buckets(max_batch);
  stride_ = (max_batch + 1 + 63) / 64 * 64;
  const int64_t total = kNumArrays * stride_ + static_cast<int64_t>(max_batch) * max_blocks_;
  device_ = backend_.empty({total}, DType::kI32);
  LLMCORE_CUDA_CHECK(cudaMallocHost(&host_, static_cast<size_t>(total) * sizeof(int32_t)));
  logits_ = backend_.empty({max_batch, model_.config().vocab_size}, DType::kF32);
  try {
    upload(nullptr, max_batch, max_blocks_);  // all padding, every table layout zero: no cache slot written
    const uintptr_t pool = reinterpret_cast<uintptr_t>(this);
    context_limits_ = {std::min(max_model_len, kernels::kPagedAttentionPartitionSize)};
    if (max_model_len > context_limits_[0]) context_limits_.push_back(max_model_len);
    for (int limit : context_limits_) {
      for (auto it = buckets_.rbegin(); it != buckets_.rend(); ++it) {
        const ForwardInput in = input_for(*it, limit);
        model_.forward(in, kv_cache_);  // eager first: GEMM plans, kernel attributes
        graphs_[{*it, limit}] = CudaGraph::capture(backend_, pool, [&] { model_.forward(in, kv_cache_); });
      }
    }
    backend_.synchronize();
  } catch (...) {
    graphs_.clear();
    cuda::CachingAllocator::instance().release_private_pool(backend_.device_index(),
                                                            reinterpret_cast<uintptr_t>(this));
    cudaFreeHost(host_);
    throw;
  }
}

DecodeGraphs::~DecodeGraphs() {
  try {
    backend_.synchronize();
  } catch (const std::exception&) {
  }
  graphs_.clear();
  try {
    cuda::CachingAllocator::instance().release_private_pool(backend_.device_index(),
                                                            reinterpret_cast<uintptr_t>(this));
  } catch (const std::exception&) {
  }
  cudaFreeHost(host_);
}

ForwardInput DecodeGraphs::input_for(int batch, int max_seq_len) const {
  int32_t* base = device_.data_as<int32_t>();
  auto view = [&](Array a, Shape shape) {
    return Tensor::wrap(base + a * stride_, std::move(shape), DType::kI32, Device::kCUDA);
  };
  ForwardInput in;
  in.token_ids = view(kTokens, {batch});
  in.positions = view(kPositions, {batch});
  in.logits_indices = view(kLogitsRows, {batch});
  in.attn.num_seqs = batch;
  in.attn.max_query_len = 1;
  in.attn.max_seq_len = max_seq_len;
  in.attn.query_start_loc = view(kQueryStart, {batch + 1});
  in.attn.seq_lens = view(kSeqLens, {batch});
  in.attn.slot_mapping = view(kSlots, {batch});
  in.attn.block_tables = Tensor::wrap(base + kNumArrays * stride_, {batch, table_width(max_seq_len)}, DType::kI32,
                                      Device::kCUDA);
  in.logits_out = Tensor::wrap(logits_.data(), {batch, model_.config().vocab_size}, DType::kF32,
                               Device::kCUDA);
  // Every row of a graphed step is a generated token (can_run), padding rows included.
  if (generated_rows_apart_) {
    in.row_kinds = RowKinds::all_generated(batch);
    in.logits_row_kinds = RowKinds::all_generated(batch);
  }
  return in;
}

int DecodeGraphs::table_width(int context_limit) const {
  return std::min(max_blocks_, (context_limit + block_size_ - 1) / block_size_);
}

void DecodeGraphs::upload(const SchedulerOutput* out, int batch, int width) {
  const int n = out ? static_cast<int>(out->scheduled.size()) : 0;
  int32_t* a = host_;
  int32_t* tables = host_ + kNumArrays * stride_;  // [batch, width]
  // Only each row's entries for its keys are written and copied (the kernels read no further):
  // the [batch, widest] corner of the table, not all `width` columns (512 at an 8192-token
  // context limit: 512 KiB per step at batch 256).
  int widest = 1;
  for (int i = 0; i < batch; ++i) {
    a[kLogitsRows * stride_ + i] = i;
    a[kQueryStart * stride_ + i] = i;
    int32_t* row = tables + static_cast<int64_t>(i) * width;
    int used = 1;  // table entries of the row's keys
    row[0] = 0;
    if (i < n) {
      const Sequence& seq = *out->scheduled[i].seq;
      const int pos = seq.num_computed_tokens;
      a[kTokens * stride_ + i] = seq.token_ids[pos];
      a[kPositions * stride_ + i] = pos;
      a[kSlots * stride_ + i] = seq.block_table[pos / block_size_] * block_size_ + pos % block_size_;
      a[kSeqLens * stride_ + i] = pos + 1;
      const int entries = std::min(pos / block_size_ + 1, static_cast<int>(seq.block_table.size()));
      std::copy_n(seq.block_table.begin(), entries, row);
      used = std::max(used, entries);
    } else {  // padding: one key (block 0, slot 0), nothing written to the cache
      a[kTokens * stride_ + i] = 0;
      a[kPositions * stride_ + i] = 0;
      a[kSlots * stride_ + i] = -1;
      a[kSeqLens * stride_ + i] = 1;
    }
    widest = std::max(widest, used);
  }
  a[kQueryStart * stride_ + batch] = batch;
  cuda::DeviceGuard guard(backend_.device_index());
  int32_t* d = device_.data_as<int32_t>();
  // The pinned staging is rewritten only after the step's sampler synchronized the stream.
  LLMCORE_CUDA_CHECK(cudaMemcpyAsync(d, host_, kNumArrays * stride_ * sizeof(int32_t),
                                     cudaMemcpyHostToDevice, backend_.stream()));
  const size_t pitch = static_cast<size_t>(width) * sizeof(int32_t);
  LLMCORE_CUDA_CHECK(cudaMemcpy2DAsync(d + kNumArrays * stride_, pitch, tables, pitch,
                                       static_cast<size_t>(widest) * sizeof(int32_t), batch,
                                       cudaMemcpyHostToDevice, backend_.stream()));
  if (out == nullptr) backend_.synchronize();
}

bool DecodeGraphs::can_run(const SchedulerOutput& out, const std::vector<LogitsRequest>& lrs) const {
  const size_t n = out.scheduled.size();
  if (n == 0 || n > static_cast<size_t>(max_batch_)) return false;
  for (size_t i = 0; i < n; ++i) {
    const ScheduledSequence& ss = out.scheduled[i];
    if (ss.num_tokens != 1 || !ss.sample || lrs[i].first_row != 0 || lrs[i].num_rows != 1) return false;
    // A prompt's last token computed alone (after a prefix-cache hit) is a prompt row: eager.
    if (ss.seq->num_computed_tokens < ss.seq->num_prompt_tokens) return false;
    if (ss.seq->block_table.size() > static_cast<size_t>(max_blocks_)) return false;
    if (ss.seq->num_computed_tokens + 1 > max_model_len_) return false;
  }
  return true;
}

Tensor DecodeGraphs::run(const SchedulerOutput& out) {
  const int n = static_cast<int>(out.scheduled.size());
  const int batch = *std::lower_bound(buckets_.begin(), buckets_.end(), n);
  int longest = 0;
  for (const ScheduledSequence& ss : out.scheduled) longest = std::max(longest, ss.seq->num_computed_tokens + 1);
  const int limit = *std::lower_bound(context_limits_.begin(), context_limits_.end(), longest);
  upload(&out, batch, table_width(limit));
  graphs_.at({batch, limit}).replay();
  return Tensor::wrap(logits_.data(), {batch, model_.config().vocab_size}, DType::kF32, Device::kCUDA);
}

}  // namespace llmcore

#endif  // LLMCORE_WITH_CUDA
