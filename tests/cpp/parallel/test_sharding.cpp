// Tensor-parallel sharding rules against the layout they must produce: for every weight of
// Llama-3-8B, Llama-2-7B and Qwen2-style configs and tp in {1, 2, 4, 8}, the ranks' shards tile the
// tensor exactly (column- and row-parallel) or repeat it (norms, replicated KV heads); every
// rank's query heads find their KV head on the same rank; take_shard copies exactly the slice.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "core/error.h"
#include "model/llama.h"
#include "parallel/sharding.h"

namespace llmcore::parallel {
namespace {

ModelConfig llama(int64_t heads, int64_t kv_heads, bool bias = false) {
  ModelConfig c;
  c.vocab_size = 1000;
  c.hidden_size = heads * 16;
  c.intermediate_size = 64 * 8;
  c.num_hidden_layers = 2;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = 16;
  c.qkv_bias = bias;
  c.o_bias = bias;
  c.mlp_bias = bias;
  return c;
}

TEST(Sharding, ShardsTileOrReplicateEveryWeight) {
  for (const ModelConfig& c : {llama(32, 8), llama(32, 32), llama(32, 2, true), llama(8, 1)}) {
    for (int tp : {1, 2, 4, 8}) {
      if (c.num_attention_heads % tp != 0) continue;
      check_tensor_parallel(c, tp);
      for (const WeightSpec& spec : llama_weight_specs(c)) {
        std::vector<TensorShard> shards;
        for (int r = 0; r < tp; ++r) shards.push_back(shard_for(c, spec.name, spec.shape, tp, r));
        const bool kv = spec.name.find("k_proj.") != std::string::npos || spec.name.find("v_proj.") != std::string::npos;
        const std::string what = spec.name + " tp " + std::to_string(tp) + " kv heads " +
                                 std::to_string(c.num_key_value_heads);
        if (tp == 1 || spec.name.find("norm.weight") != std::string::npos) {
          for (const TensorShard& s : shards) EXPECT_EQ(s.kind, TensorShard::kReplicated) << what;
          continue;
        }
        if (kv && c.num_key_value_heads < tp) {  // each KV head on tp / Hkv consecutive ranks
          const int copies = tp / static_cast<int>(c.num_key_value_heads);
          for (int r = 0; r < tp; ++r) {
            EXPECT_EQ(shards[r].kind, TensorShard::kRows) << what;
            EXPECT_EQ(shards[r].begin, (r / copies) * c.head_dim) << what << " rank " << r;
            EXPECT_EQ(shards[r].end - shards[r].begin, c.head_dim) << what;
          }
          continue;
        }
        if ((spec.name.find("o_proj.bias") != std::string::npos) ||
            (spec.name.find("down_proj.bias") != std::string::npos)) {
          EXPECT_EQ(shards[0].kind, TensorShard::kReplicated) << what;
          for (int r = 1; r < tp; ++r) EXPECT_EQ(shards[r].kind, TensorShard::kNone) << what;
          continue;
        }
        // The rest tile their split dimension in rank order.
        const TensorShard::Kind kind = shards[0].kind;
        ASSERT_TRUE(kind == TensorShard::kRows || kind == TensorShard::kColumns) << what;
        const int64_t extent = kind == TensorShard::kRows ? spec.shape[0] : spec.shape[1];
        int64_t next = 0;
        for (const TensorShard& s : shards) {
          EXPECT_EQ(s.kind, kind) << what;
          EXPECT_EQ(s.begin, next) << what;
          next = s.end;
        }
        EXPECT_EQ(next, extent) << what;
        const bool row_parallel = spec.name.find("o_proj.") != std::string::npos ||
                                  spec.name.find("down_proj.") != std::string::npos;
        EXPECT_EQ(kind, row_parallel ? TensorShard::kColumns : TensorShard::kRows) << what;
      }
    }
  }
}

TEST(Sharding, QueryHeadsFindTheirKvHeadOnTheSameRank) {
  for (const ModelConfig& c : {llama(32, 8), llama(32, 2), llama(8, 1), llama(32, 32)}) {
    for (int tp : {2, 4, 8}) {
      const int64_t group = c.num_attention_heads / c.num_key_value_heads;
      for (int r = 0; r < tp; ++r) {
        const TensorShard q = shard_for(c, "model.layers.0.self_attn.q_proj.weight",
                                        {c.num_attention_heads * c.head_dim, c.hidden_size}, tp, r);
        const TensorShard k = shard_for(c, "model.layers.0.self_attn.k_proj.weight",
                                        {c.num_key_value_heads * c.head_dim, c.hidden_size}, tp, r);
        for (int64_t h = q.begin / c.head_dim; h < q.end / c.head_dim; ++h) {
          const int64_t kv_head = h / group;
          EXPECT_GE(kv_head * c.head_dim, k.begin) << "rank " << r << " q head " << h;
          EXPECT_LT(kv_head * c.head_dim, k.end) << "rank " << r << " q head " << h;
        }
      }
    }
  }
}

TEST(Sharding, ConfigsThatCannotSplitAreRefused) {
  EXPECT_THROW(check_tensor_parallel(llama(32, 8), 0), Error);
  EXPECT_THROW(check_tensor_parallel(llama(12, 4), 8), Error);  // 12 query heads over 8 ranks
  EXPECT_THROW(check_tensor_parallel(llama(24, 3), 2), Error);  // 3 KV heads: neither way
  ModelConfig odd = llama(8, 8);
  odd.intermediate_size = 100;
  EXPECT_THROW(check_tensor_parallel(odd, 8), Error);
  EXPECT_NO_THROW(check_tensor_parallel(llama(32, 8), 8));
}

TEST(Sharding, TakeShardCopiesExactlyTheSlice) {
  Tensor full = Tensor::empty({6, 10}, DType::kF32);
  std::iota(full.data_as<float>(), full.data_as<float>() + full.numel(), 0.0f);
  const Tensor rows = take_shard(full, {TensorShard::kRows, 2, 5});
  ASSERT_EQ(rows.shape(), (Shape{3, 10}));
  for (int64_t i = 0; i < rows.numel(); ++i) EXPECT_EQ(rows.data_as<float>()[i], 20.0f + i);
  const Tensor cols = take_shard(full, {TensorShard::kColumns, 7, 10});
  ASSERT_EQ(cols.shape(), (Shape{6, 3}));
  for (int64_t r = 0; r < 6; ++r) {
    for (int64_t j = 0; j < 3; ++j) EXPECT_EQ(cols.data_as<float>()[r * 3 + j], r * 10.0f + 7 + j);
  }
  EXPECT_FALSE(take_shard(full, {TensorShard::kNone, 0, 0}).defined());
  const Tensor whole = take_shard(full, {});
  EXPECT_EQ(whole.shape(), full.shape());
  EXPECT_NE(whole.data(), full.data());
  EXPECT_THROW(take_shard(full, {TensorShard::kRows, 4, 7}), Error);
}

}  // namespace
}  // namespace llmcore::parallel
