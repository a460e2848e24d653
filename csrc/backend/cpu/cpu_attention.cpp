// Rotary position embedding and causal attention over the paged KV cache.
//
// Paged attention computes one (query token, query head) pair per OpenMP iteration and visits
// its keys in ascending position order. The bits of an output row therefore depend only on the
// query vector, its position and the cached keys and values, never on the other rows of the
// step, on how a prompt was split into prefill chunks, or on the thread count.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backend/cpu/cpu_ops.h"

namespace llmcore::cpu {

namespace {

// sum_i a[i] * b[i] over n floats with 8 interleaved partial sums combined in a fixed tree:
// the same order on every call, and one the compiler can keep in vector registers.
float dot(const float* a, const float* b, int n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
  float tail = 0.0f;
  for (; i < n; ++i) tail += a[i] * b[i];
  return (((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))) + tail;
}

// Where the tokens of one sequence sit, as backend.h's AttentionMetadata describes them.
struct SeqSpan {
  int first_token;  // row of the sequence's first query token in the step
  int query_len;    // its query tokens in this step
  int seq_len;      // context length including this step's tokens
};

// Validates the metadata against the step and the cache; returns one span per sequence.
std::vector<SeqSpan> check_metadata(const AttentionMetadata& meta, int64_t num_tokens,
                                    int64_t num_blocks, int64_t block_size, int sliding_window) {
  const int64_t num_seqs = meta.num_seqs;
  LLMCORE_CHECK(num_seqs >= 0, "attention metadata: num_seqs = ", num_seqs);
  check_cpu(meta.query_start_loc, "query_start_loc", DType::kI32, {num_seqs + 1});
  check_cpu(meta.seq_lens, "seq_lens", DType::kI32, {num_seqs});
  LLMCORE_CHECK(meta.block_tables.ndim() == 2, "block_tables must be [S, max_blocks], got ",
                shape_str(meta.block_tables.shape()));
  const int64_t max_blocks = meta.block_tables.dim(1);
  check_cpu(meta.block_tables, "block_tables", DType::kI32, {num_seqs, max_blocks});

  const int32_t* start = meta.query_start_loc.data_as<int32_t>();  // [S + 1]
  const int32_t* lens = meta.seq_lens.data_as<int32_t>();          // [S]
  const int32_t* tables = meta.block_tables.data_as<int32_t>();    // [S, max_blocks]
  LLMCORE_CHECK(start[0] == 0 && start[num_seqs] == num_tokens, "query_start_loc spans [", start[0],
                ", ", start[num_seqs], "), the step has ", num_tokens, " tokens");
  std::vector<SeqSpan> spans(static_cast<size_t>(num_seqs));
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int query_len = start[s + 1] - start[s];
    const int seq_len = lens[s];
    LLMCORE_CHECK(query_len >= 0 && query_len <= seq_len, "sequence ", s, ": query_len ", query_len,
                  ", seq_len ", seq_len);
    LLMCORE_CHECK(query_len <= meta.max_query_len && seq_len <= meta.max_seq_len, "sequence ", s,
                  ": query_len ", query_len, " / seq_len ", seq_len, " exceed max_query_len ",
                  meta.max_query_len, " / max_seq_len ", meta.max_seq_len);
    LLMCORE_CHECK(query_len >= meta.min_query_len, "sequence ", s, ": query_len ", query_len,
                  " is below min_query_len ", meta.min_query_len);
    LLMCORE_CHECK(seq_len <= max_blocks * block_size, "sequence ", s, ": seq_len ", seq_len,
                  " needs more than the ", max_blocks, " blocks of its block table");
    // Blocks the step reads: from the first query's window start to the last position.
    const int first_query_pos = seq_len - query_len;
    const int first_key =
        sliding_window > 0 ? std::max(0, first_query_pos - sliding_window + 1) : 0;
    if (query_len > 0) {
      for (int64_t b = first_key / block_size; b * block_size < seq_len; ++b) {
        const int32_t block = tables[s * max_blocks + b];
        LLMCORE_CHECK(block >= 0 && block < num_blocks, "sequence ", s, ": block_tables[", b,
                      "] = ", block, " is outside [0, ", num_blocks, ")");
      }
    }
    spans[static_cast<size_t>(s)] = SeqSpan{start[s], query_len, seq_len};
  }
  return spans;
}

}  // namespace

void rotary_embedding(Tensor& qkv, const Tensor& positions, const Tensor& cos_sin,
                      const AttnShape& shape, int num_threads) {
  check_attn_shape(shape);
  const int head_dim = shape.head_dim, half = head_dim / 2;
  LLMCORE_CHECK(head_dim % 2 == 0, "rotary_embedding needs an even head_dim, got ", head_dim);
  check_cpu_matrix(qkv, "rotary qkv");
  const int64_t num_tokens = qkv.dim(0), width = qkv.dim(1);
  check_cpu(qkv, "rotary qkv", DType::kF32, {num_tokens, shape.qkv_width()});
  check_cpu(positions, "positions", DType::kI32, {num_tokens});
  check_cpu_matrix(cos_sin, "cos_sin");
  const int64_t max_pos = cos_sin.dim(0);
  check_cpu(cos_sin, "cos_sin", DType::kF32, {max_pos, head_dim});
  const int32_t* pos = positions.data_as<int32_t>();  // [T]
  for (int64_t t = 0; t < num_tokens; ++t)
    LLMCORE_CHECK(pos[t] >= 0 && pos[t] < max_pos, "positions[", t, "] = ", pos[t],
                  " is outside the rotary table [0, ", max_pos, ")");

  // The q heads and then the k heads are the first Hq + Hkv head-sized pieces of a row.
  const int num_rotated = shape.num_heads + shape.num_kv_heads;
  float* rows = qkv.data_as<float>();             // [T, (Hq + 2 Hkv) * D]
  const float* table = cos_sin.data_as<float>();  // [max_pos, D]: cos[D/2] then sin[D/2]
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t t = 0; t < num_tokens; ++t) {
    const float* cos = table + static_cast<int64_t>(pos[t]) * head_dim;
    const float* sin = cos + half;
    for (int h = 0; h < num_rotated; ++h) {
      float* x = rows + t * width + static_cast<int64_t>(h) * head_dim;  // [D]
      for (int i = 0; i < half; ++i) {
        const float x1 = x[i], x2 = x[i + half];
        x[i] = x1 * cos[i] - x2 * sin[i];
        x[i + half] = x2 * cos[i] + x1 * sin[i];
      }
    }
  }
}

void paged_attention(Tensor& out, const Tensor& qkv, const Tensor& k_cache, const Tensor& v_cache,
                     const AttentionMetadata& meta, const AttnShape& shape, float scale,
                     int sliding_window, int num_threads) {
  check_attn_shape(shape);
  check_kv_cache_layer(k_cache, v_cache, shape);
  LLMCORE_CHECK(sliding_window >= 0, "sliding_window must be >= 0, got ", sliding_window);
  check_cpu_matrix(qkv, "attention qkv");
  const int64_t num_tokens = qkv.dim(0);
  check_cpu(qkv, "attention qkv", DType::kF32, {num_tokens, shape.qkv_width()});
  const int num_heads = shape.num_heads, num_kv_heads = shape.num_kv_heads;
  const int head_dim = shape.head_dim;
  check_cpu(out, "attention out", DType::kF32, {num_tokens, int64_t{num_heads} * head_dim});
  const int64_t num_blocks = k_cache.dim(0), block_size = k_cache.dim(2);
  const std::vector<SeqSpan> spans =
      check_metadata(meta, num_tokens, num_blocks, block_size, sliding_window);

  // token -> sequence, so the parallel loop can run over flat (token, head) pairs.
  std::vector<int> token_seq(static_cast<size_t>(num_tokens));
  int max_seq_len = 0;
  for (size_t s = 0; s < spans.size(); ++s) {
    for (int i = 0; i < spans[s].query_len; ++i)
      token_seq[spans[s].first_token + i] = static_cast<int>(s);
    max_seq_len = std::max(max_seq_len, spans[s].seq_len);
  }

  const int group = num_heads / num_kv_heads;  // query heads per kv head (GQA)
  const int64_t qkv_width = shape.qkv_width();
  const int64_t max_blocks = meta.block_tables.dim(1);
  const float* q_all = qkv.data_as<float>();                     // [T, (Hq + 2 Hkv) * D]
  const float* k_all = k_cache.data_as<float>();                 // [NB, Hkv, BS, D]
  const float* v_all = v_cache.data_as<float>();                 // [NB, Hkv, BS, D]
  const int32_t* tables = meta.block_tables.data_as<int32_t>();  // [S, max_blocks]
  float* dst = out.data_as<float>();                             // [T, Hq * D]
  const int64_t num_items = num_tokens * num_heads;

#pragma omp parallel num_threads(num_threads)
  {
    std::vector<float> probs(static_cast<size_t>(max_seq_len));  // scores, then weights
#pragma omp for schedule(dynamic, 4)
    for (int64_t item = 0; item < num_items; ++item) {
      const int64_t t = item / num_heads;
      const int h = static_cast<int>(item % num_heads);
      const SeqSpan& span = spans[token_seq[t]];
      const int pos = span.seq_len - span.query_len + static_cast<int>(t - span.first_token);
      const int first_key = sliding_window > 0 ? std::max(0, pos - sliding_window + 1) : 0;
      const int num_keys = pos - first_key + 1;
      const int kv_head = h / group;
      const int32_t* table = tables + static_cast<int64_t>(token_seq[t]) * max_blocks;
      // Offset of key position j's [D] vector in either cache.
      auto cache_offset = [&](int j) {
        const int64_t block = table[j / block_size];
        return ((block * num_kv_heads + kv_head) * block_size + j % block_size) * head_dim;
      };
      const float* q = q_all + t * qkv_width + static_cast<int64_t>(h) * head_dim;     // [D]
      float* o = dst + t * num_heads * head_dim + static_cast<int64_t>(h) * head_dim;  // [D]

      float max_score = -std::numeric_limits<float>::infinity();
      for (int k = 0; k < num_keys; ++k) {
        const float score = dot(q, k_all + cache_offset(first_key + k), head_dim) * scale;
        probs[k] = score;
        max_score = std::max(max_score, score);
      }
      float denom = 0.0f;
      for (int k = 0; k < num_keys; ++k) {
        probs[k] = std::exp(probs[k] - max_score);
        denom += probs[k];
      }
      std::fill(o, o + head_dim, 0.0f);
      for (int k = 0; k < num_keys; ++k) {
        const float p = probs[k];
        const float* v = v_all + cache_offset(first_key + k);  // [D]
        for (int d = 0; d < head_dim; ++d) o[d] += p * v[d];
      }
      const float inv_denom = 1.0f / denom;
      for (int d = 0; d < head_dim; ++d) o[d] *= inv_denom;
    }
  }
}

}  // namespace llmcore::cpu
