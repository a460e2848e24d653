// Tensor-parallel sharding of a Llama-family checkpoint (Megatron layout, as vLLM shards it):
//   column-parallel (rows of [out, in] split): q_proj, k_proj, v_proj, gate_proj, up_proj and
//     their biases; vocab-parallel: embed_tokens and lm_head (rows = vocabulary entries);
//   row-parallel (columns split): o_proj and down_proj, followed by an all-reduce; their biases
//     are kept whole on rank 0 only (added once, before the all-reduce sums the ranks);
//   replicated: the RMSNorm weights.
// Attention heads: rank r of tp holds query heads [r Hq/tp, (r+1) Hq/tp). With Hkv >= tp each rank
// holds Hkv/tp KV heads; with fewer KV heads than ranks, each KV head is replicated on tp/Hkv
// consecutive ranks, so a rank's query heads always find their KV head locally.
//
// Each rank reads only its slices from the (mmapped) checkpoint: take_shard copies one slice.
#pragma once

#include <cstdint>
#include <string>

#include "core/tensor.h"
#include "model/config.h"

namespace llmcore::parallel {

struct TensorShard {
  // kNone: this rank holds nothing of the tensor (a row-parallel bias on ranks > 0).
  enum Kind { kReplicated, kRows, kColumns, kNone } kind = kReplicated;
  int64_t begin = 0;  // range along dim 0 (kRows) or dim 1 (kColumns)
  int64_t end = 0;
};

// Throws ValueError naming the field when `c` cannot be split `tp` ways (tp < 1, query heads or
// intermediate size not divisible, KV heads neither a multiple nor a divisor of tp).
void check_tensor_parallel(const ModelConfig& c, int tp);

// The part of checkpoint tensor `name` (shape `shape`) that rank `rank` of `tp` holds.
TensorShard shard_for(const ModelConfig& c, const std::string& name, const Shape& shape, int tp, int rank);

// The shard's elements of a host tensor, as a new contiguous host tensor of the same dtype
// (kReplicated: a copy of the whole tensor; kNone: an undefined Tensor).
Tensor take_shard(const Tensor& full, const TensorShard& shard);

// The shape of `shard` of a tensor of shape `full` (kNone: empty Shape).
Shape shard_shape(const Shape& full, const TensorShard& shard);

// What one rank computes: its query and KV heads, its part of the MLP, and its vocabulary rows
// (embed_tokens / lm_head shards are padded to vocab_rows, so every rank's logits have the same
// width for the all-gather; rows past the vocabulary are zero).
struct RankDims {
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t intermediate_size = 0;
  int64_t vocab_start = 0;  // first vocabulary id of this rank
  int64_t vocab_rows = 0;   // ceil(vocab_size / tp)
};
RankDims rank_dims(const ModelConfig& c, int tp, int rank);

// Whether `name` is a vocab-parallel tensor (embed_tokens, lm_head).
bool is_vocab_parallel(const std::string& name);

}  // namespace llmcore::parallel
