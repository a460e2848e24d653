#include "parallel/sharding.h"

#include <cstring>

#include "core/error.h"

namespace llmcore::parallel {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// [r n / tp, (r + 1) n / tp) for n divisible by tp; else ceil-sized parts, the last one shorter.
TensorShard split(TensorShard::Kind kind, int64_t n, int tp, int rank) {
  const int64_t per = (n + tp - 1) / tp;
  TensorShard s;
  s.kind = kind;
  s.begin = std::min(n, per * rank);
  s.end = std::min(n, s.begin + per);
  return s;
}

}  // namespace

void check_tensor_parallel(const ModelConfig& c, int tp) {
  LLMCORE_CHECK_ARG(tp >= 1, "tensor_parallel_size must be >= 1, got ", tp);
  LLMCORE_CHECK_ARG(c.num_attention_heads % tp == 0, "num_attention_heads (", c.num_attention_heads,
                    ") must be divisible by tensor_parallel_size (", tp, ")");
  LLMCORE_CHECK_ARG(c.intermediate_size % tp == 0, "intermediate_size (", c.intermediate_size,
                    ") must be divisible by tensor_parallel_size (", tp, ")");
  const int64_t kv = c.num_key_value_heads;
  LLMCORE_CHECK_ARG(kv % tp == 0 || tp % kv == 0, "num_key_value_heads (", kv,
                    ") must be a multiple or a divisor of tensor_parallel_size (", tp, ")");
}

TensorShard shard_for(const ModelConfig& c, const std::string& name, const Shape& shape, int tp, int rank) {
  LLMCORE_CHECK(rank >= 0 && rank < tp, "rank ", rank, " of ", tp);
  LLMCORE_CHECK(!shape.empty(), "shard_for ", name, ": scalar tensor");
  if (tp == 1 || ends_with(name, "norm.weight")) return {};
  const int64_t d = c.head_dim;
  if (contains(name, "q_proj.")) {
    const int64_t per = c.num_attention_heads / tp * d;
    return {TensorShard::kRows, rank * per, (rank + 1) * per};
  }
  if (contains(name, "k_proj.") || contains(name, "v_proj.")) {
    const int64_t kv = c.num_key_value_heads;
    if (kv >= tp) {
      const int64_t per = kv / tp * d;
      return {TensorShard::kRows, rank * per, (rank + 1) * per};
    }
    const int64_t head = rank / (tp / kv);  // replicated on tp / kv consecutive ranks
    return {TensorShard::kRows, head * d, (head + 1) * d};
  }
  if (contains(name, "gate_proj.") || contains(name, "up_proj.")) {
    return split(TensorShard::kRows, shape[0], tp, rank);
  }
  if (contains(name, "o_proj.") || contains(name, "down_proj.")) {
    if (ends_with(name, ".bias")) return {rank == 0 ? TensorShard::kReplicated : TensorShard::kNone, 0, 0};
    LLMCORE_CHECK(shape.size() == 2, name, " must be 2-D");
    return split(TensorShard::kColumns, shape[1], tp, rank);
  }
  if (is_vocab_parallel(name)) return split(TensorShard::kRows, shape[0], tp, rank);
  throw_runtime_error("no tensor-parallel rule for checkpoint tensor '", name, "'");
}

bool is_vocab_parallel(const std::string& name) {
  return name == "model.embed_tokens.weight" || name == "lm_head.weight";
}

Shape shard_shape(const Shape& full, const TensorShard& s) {
  Shape shape = full;
  switch (s.kind) {
    case TensorShard::kNone:
      return {};
    case TensorShard::kReplicated:
      return shape;
    case TensorShard::kRows:
      shape[0] = s.end - s.begin;
      return shape;
    case TensorShard::kColumns:
      shape[1] = s.end - s.begin;
      return shape;
  }
  return shape;
}

RankDims rank_dims(const ModelConfig& c, int tp, int rank) {
  check_tensor_parallel(c, tp);
  LLMCORE_CHECK(rank >= 0 && rank < tp, "rank ", rank, " of ", tp);
  RankDims d;
  d.num_heads = c.num_attention_heads / tp;
  d.num_kv_heads = c.num_key_value_heads >= tp ? c.num_key_value_heads / tp : 1;
  d.intermediate_size = c.intermediate_size / tp;
  d.vocab_rows = (c.vocab_size + tp - 1) / tp;
  d.vocab_start = d.vocab_rows * rank;
  return d;
}

Tensor take_shard(const Tensor& full, const TensorShard& s) {
  LLMCORE_CHECK(full.device() == Device::kCPU, "take_shard reads host tensors");
  const size_t elem = dtype_size(full.dtype());
  if (s.kind == TensorShard::kNone) return Tensor();
  if (s.kind == TensorShard::kReplicated) {
    Tensor out = Tensor::empty(full.shape(), full.dtype());
    if (full.nbytes()) std::memcpy(out.data(), full.data(), full.nbytes());
    return out;
  }
  LLMCORE_CHECK(s.begin >= 0 && s.begin <= s.end, "bad shard range [", s.begin, ", ", s.end, ")");
  Shape shape = full.shape();
  if (s.kind == TensorShard::kRows) {
    LLMCORE_CHECK(s.end <= shape[0], "row shard [", s.begin, ", ", s.end, ") of ", shape_str(shape));
    const int64_t row_elems = shape[0] > 0 ? full.numel() / shape[0] : 0;
    shape[0] = s.end - s.begin;
    Tensor out = Tensor::empty(shape, full.dtype());
    if (out.nbytes()) {
      std::memcpy(out.data(), static_cast<const char*>(full.data()) + s.begin * row_elems * elem, out.nbytes());
    }
    return out;
  }
  LLMCORE_CHECK(shape.size() == 2 && s.end <= shape[1], "column shard [", s.begin, ", ", s.end, ") of ",
                shape_str(shape));
  const int64_t rows = shape[0], cols = shape[1], width = s.end - s.begin;
  shape[1] = width;
  Tensor out = Tensor::empty(shape, full.dtype());
  const char* src = static_cast<const char*>(full.data());
  char* dst = static_cast<char*>(out.data());
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(dst + r * width * elem, src + (r * cols + s.begin) * elem, width * elem);
  }
  return out;
}

}  // namespace llmcore::parallel
