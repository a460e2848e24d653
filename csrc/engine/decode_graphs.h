// DecodeGraphs: CUDA graphs of the model's decode step, one per batch-size bucket, so a decode
// step costs one host->device copy of its inputs and one graph launch instead of ~200 launches.
//
// Every input lives at a fixed device address (one persistent buffer, filled from pinned host
// memory each step). A step of n sequences runs the graph of the smallest bucket B >= n; rows
// n..B-1 are padding (token 0 at position 0, no cache write, attention over block 0) whose
// logits nobody reads: rows never mix (batch invariance), so padding changes no real row's bits.
// Attention is captured twice per bucket: for contexts within one attention partition (no
// split-K kernels) and for contexts up to max_model_len (partition count and workspace fixed;
// CTAs of partitions a row does not have exit at once); a step uses the first that covers its
// longest context. Each set's block table is only as wide as its context limit needs (32 columns
// for 512 keys in blocks of 16), so a short-context step stages and copies that much, not
// max_model_len's worth per sequence. Scratch memory comes from one private
// allocator pool shared by all buckets' graphs (they never run at the same time); the logits
// buffer is shared too.
#pragma once

#ifdef LLMCORE_WITH_CUDA

#include <cstdint>
#include <map>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_graph.h"
#include "engine/scheduler.h"
#include "model/model.h"

namespace llmcore {

struct LogitsRequest;

class DecodeGraphs {
 public:
  // Captures graphs for batch sizes up to max_batch (buckets 1, 2, 4, 8, then steps of 8 to 64
  // and 16 beyond). kv_cache must be allocated and outlive this object. generated_rows_apart: the
  // graphs' rows are marked as generated tokens (ExecutorConfig::generated_rows_apart).
  DecodeGraphs(CudaBackend& backend, Model& model, KVCache& kv_cache, int block_size, int max_model_len,
               int max_batch, bool generated_rows_apart);
  ~DecodeGraphs();
  DecodeGraphs(const DecodeGraphs&) = delete;
  DecodeGraphs& operator=(const DecodeGraphs&) = delete;

  // Whether `out` is a step the graphs can run: every sequence computes one generated token and
  // samples it (logits row {0, 1}), and there are at most max_batch of them.
  bool can_run(const SchedulerOutput& out, const std::vector<LogitsRequest>& logits_requests) const;
  // Runs it: returns logits [B, V] (a view of the shared buffer) whose first n rows are the
  // sequences' in order. The caller must read them before the next run.
  Tensor run(const SchedulerOutput& out);

  const std::vector<int>& buckets() const { return buckets_; }

 private:
  ForwardInput input_for(int batch, int max_seq_len) const;
  // Block-table columns of the graphs captured for contexts up to context_limit: the blocks of
  // that many keys (a short-context step uploads no table columns its keys cannot reach).
  int table_width(int context_limit) const;
  // Fills the host staging for `batch` rows from `out` (padding past its sequences), the block
  // table as [batch, width] with each row's entries for its keys only (the columns past them keep
  // what an earlier step left: no kernel reads them), and copies the arrays and the table's
  // [batch, widest row] corner to the device buffer.
  void upload(const SchedulerOutput* out, int batch, int width);

  CudaBackend& backend_;
  Model& model_;
  KVCache& kv_cache_;
  const int block_size_;
  const bool generated_rows_apart_;
  const int max_model_len_;
  const int max_blocks_;  // widest block table: ceil(max_model_len / block_size)
  int max_batch_ = 0;
  int64_t stride_ = 0;    // ints per small array (>= max_batch + 1, 256-byte multiple)
  std::vector<int> buckets_;
  Tensor device_;         // int32 [6 * stride_ + max_batch * max_blocks_]
  int32_t* host_ = nullptr;  // pinned, same layout
  Tensor logits_;         // [max_batch, V] float32
  std::vector<int> context_limits_;        // max_seq_len of each captured set, ascending
  std::map<std::pair<int, int>, CudaGraph> graphs_;  // (batch, context limit) -> graph
};

}  // namespace llmcore

#endif  // LLMCORE_WITH_CUDA
