#include "model/llama.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>

#include "core/dummy_values.h"
#include "core/error.h"
#include "model/rope.h"
#include "model/safetensors.h"
#include "parallel/communicator.h"
#include "parallel/sharding.h"

namespace llmcore {

namespace {

std::string layer_prefix(int64_t layer) { return str_cat("model.layers.", layer, "."); }

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_float_dtype(DType t) { return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16; }

// splitmix64 finalizer: turns (seed, name, chunk) into well-spread mt19937_64 seeds.
uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001b3ull;
  return h;
}

float element_as_float(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::kF32:
      return t.data_as<const float>()[i];
    case DType::kF16:
      return fp16_to_float(t.data_as<const uint16_t>()[i]);
    case DType::kBF16:
      return bf16_to_float(t.data_as<const uint16_t>()[i]);
    default:
      break;
  }
  LLMCORE_CHECK(false, "not a float dtype: ", dtype_name(t.dtype()));
  return 0.0f;
}

// Stacks host tensors along dim 0 ([r_i, ...] -> [sum r_i, ...]) in their common dtype, or in
// float32 when a checkpoint mixes dtypes between the parts.
Tensor concat_rows(const std::vector<Tensor>& parts) {
  const DType dtype = parts[0].dtype();
  bool same_dtype = true;
  int64_t rows = 0;
  for (const Tensor& p : parts) {
    same_dtype = same_dtype && p.dtype() == dtype;
    rows += p.dim(0);
  }
  Shape shape = parts[0].shape();
  shape[0] = rows;
  Tensor out = Tensor::empty(shape, same_dtype ? dtype : DType::kF32);
  char* dst = static_cast<char*>(out.data());
  for (const Tensor& p : parts) {
    if (same_dtype) {
      std::memcpy(dst, p.data(), p.nbytes());
      dst += p.nbytes();
      continue;
    }
    float* f = reinterpret_cast<float*>(dst);
    for (int64_t i = 0; i < p.numel(); ++i) f[i] = element_as_float(p, i);
    dst += p.numel() * sizeof(float);
  }
  return out;
}

}  // namespace

std::vector<WeightSpec> llama_weight_specs(const ModelConfig& c) {
  const int64_t hd = c.hidden_size;
  const int64_t q_rows = c.num_attention_heads * c.head_dim;
  const int64_t kv_rows = c.num_key_value_heads * c.head_dim;
  const int64_t inter = c.intermediate_size;
  std::vector<WeightSpec> specs;
  specs.push_back({"model.embed_tokens.weight", {c.vocab_size, hd}});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = layer_prefix(l);
    const std::string attn = p + "self_attn.";
    const std::string mlp = p + "mlp.";
    specs.push_back({p + "input_layernorm.weight", {hd}});
    specs.push_back({attn + "q_proj.weight", {q_rows, hd}});
    specs.push_back({attn + "k_proj.weight", {kv_rows, hd}});
    specs.push_back({attn + "v_proj.weight", {kv_rows, hd}});
    if (c.qkv_bias) {
      specs.push_back({attn + "q_proj.bias", {q_rows}});
      specs.push_back({attn + "k_proj.bias", {kv_rows}});
      specs.push_back({attn + "v_proj.bias", {kv_rows}});
    }
    specs.push_back({attn + "o_proj.weight", {hd, q_rows}});
    if (c.o_bias) specs.push_back({attn + "o_proj.bias", {hd}});
    specs.push_back({p + "post_attention_layernorm.weight", {hd}});
    specs.push_back({mlp + "gate_proj.weight", {inter, hd}});
    specs.push_back({mlp + "up_proj.weight", {inter, hd}});
    specs.push_back({mlp + "down_proj.weight", {hd, inter}});
    if (c.mlp_bias) {
      specs.push_back({mlp + "gate_proj.bias", {inter}});
      specs.push_back({mlp + "up_proj.bias", {inter}});
      specs.push_back({mlp + "down_proj.bias", {hd}});
    }
  }
  specs.push_back({"model.norm.weight", {hd}});
  if (!c.tie_word_embeddings) specs.push_back({"lm_head.weight", {c.vocab_size, hd}});
  return specs;
}

namespace {

// Dummy weights: norm weights 1, everything else uniform with std 0.02 (bound 0.02 sqrt 3),
// drawn on the backend (backend.h fill_dummy) from a stream per tensor name, so a weight's values
// depend only on (seed, name) and both backends draw the same numbers.
bool is_norm_weight(const std::string& name) { return ends_with(name, "norm.weight"); }
uint64_t dummy_stream(uint64_t seed, const std::string& name) { return mix64(seed ^ mix64(fnv1a(name))); }
constexpr float kDummyBound = 0.034641f;  // just under 0.02 * sqrt(3), as a float

}  // namespace

Tensor dummy_weight(const std::string& name, const Shape& shape, uint64_t seed) {
  Tensor t = Tensor::empty(shape, DType::kF32);
  float* data = t.data_as<float>();
  const int64_t n = t.numel();
  if (is_norm_weight(name)) {
    std::fill(data, data + n, 1.0f);
    return t;
  }
  const uint64_t stream = dummy_stream(seed, name);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) data[i] = dummy_value(stream, static_cast<uint64_t>(i), kDummyBound);
  return t;
}

LlamaModel::LlamaModel(const ModelConfig& config, const std::string& dir, Backend& backend,
                       LoadFormat load_format, uint64_t seed, const TensorParallel& tp)
    : config_(config), backend_(backend), tp_(tp) {
  LLMCORE_CHECK_ARG(config.head_dim > 0 && config.num_key_value_heads > 0 &&
                        config.num_attention_heads % config.num_key_value_heads == 0,
                    "model config: num_attention_heads (", config.num_attention_heads,
                    ") must be a multiple of num_key_value_heads (", config.num_key_value_heads,
                    ") and head_dim (", config.head_dim, ") >= 1");
  LLMCORE_CHECK(tp.size == 1 || (tp.comm != nullptr && tp.comm->world_size() == tp.size && tp.comm->rank() == tp.rank),
                "tensor-parallel rank ", tp.rank, " of ", tp.size, " needs its communicator");
  const parallel::RankDims dims = parallel::rank_dims(config, tp.size, tp.rank);
  attn_shape_.num_heads = static_cast<int>(dims.num_heads);
  attn_shape_.num_kv_heads = static_cast<int>(dims.num_kv_heads);
  attn_shape_.head_dim = static_cast<int>(config.head_dim);
  intermediate_size_ = dims.intermediate_size;
  vocab_start_ = dims.vocab_start;

  std::map<std::string, Shape> shapes;
  for (const WeightSpec& spec : llama_weight_specs(config_)) shapes[spec.name] = spec.shape;
  auto shape_of = [&](const std::string& name) {
    auto it = shapes.find(name);
    LLMCORE_CHECK(it != shapes.end(), "no spec for ", name);
    return it->second;
  };
  auto shard_of = [&](const std::string& name) {
    return parallel::shard_for(config_, name, shape_of(name), tp.size, tp.rank);
  };
  // Rows this rank keeps of `name`: its shard's, vocab-parallel tensors padded to dims.vocab_rows.
  auto rows_of = [&](const std::string& name, const parallel::TensorShard& shard) {
    const Shape s = parallel::shard_shape(shape_of(name), shard);
    return parallel::is_vocab_parallel(name) && tp.size > 1 ? dims.vocab_rows : s[0];
  };
  // Zeroes rows [from, to) of the device tensor `out` (the vocabulary padding of the last rank).
  auto zero_rows = [&](Tensor& out, int64_t from, int64_t to) {
    if (to <= from) return;
    const int64_t row_elems = out.numel() / out.dim(0);
    const size_t elem = dtype_size(out.dtype());
    Shape shape = out.shape();
    shape[0] = to - from;
    Tensor zeros = Tensor::empty(shape, out.dtype());
    std::memset(zeros.data(), 0, zeros.nbytes());
    Tensor view = Tensor::wrap(static_cast<char*>(out.data()) + from * row_elems * elem, shape, out.dtype(),
                               out.device());
    backend_.copy(view, zeros);
  };

  if (load_format == LoadFormat::kDummy) {
    // Drawn where the weights live: nothing of the model's size is built on the host. Each rank
    // draws its slice of the whole tensor's numbers, so the model is the same at every tp.
    load([&](const std::vector<std::string>& names) {
      const Shape full0 = shape_of(names[0]);
      if (names.size() == 1 && is_norm_weight(names[0])) {
        Tensor ones = Tensor::empty(full0, DType::kF32);
        std::fill(ones.data_as<float>(), ones.data_as<float>() + ones.numel(), 1.0f);
        return backend_.load_weight(ones);
      }
      std::vector<parallel::TensorShard> shards;
      int64_t rows = 0;
      for (const std::string& n : names) {
        shards.push_back(shard_of(n));
        if (shards.back().kind == parallel::TensorShard::kNone) return Tensor();
        rows += rows_of(n, shards.back());
      }
      Shape shape = parallel::shard_shape(full0, shards[0]);
      shape[0] = rows;
      Tensor out = backend_.empty(shape, backend_.activation_dtype());
      const int64_t row_elems = rows > 0 ? out.numel() / rows : 0;
      const size_t elem = dtype_size(out.dtype());
      int64_t row = 0;
      for (size_t k = 0; k < names.size(); ++k) {
        const Shape full = shape_of(names[k]);
        const parallel::TensorShard& sh = shards[k];
        const Shape part = parallel::shard_shape(full, sh);
        Tensor view = Tensor::wrap(static_cast<char*>(out.data()) + row * row_elems * elem, part, out.dtype(),
                                   out.device());
        DummyIndex index;
        int64_t full_row = 1;
        for (size_t d = 1; d < full.size(); ++d) full_row *= full[d];
        if (sh.kind == parallel::TensorShard::kRows) index.first = sh.begin * full_row;
        if (sh.kind == parallel::TensorShard::kColumns) index = {sh.begin, full_row};
        backend_.fill_dummy(view, dummy_stream(seed, names[k]), kDummyBound, index);
        zero_rows(out, row + part[0], row + rows_of(names[k], sh));
        row += rows_of(names[k], sh);
      }
      return out;
    });
  } else {
    const WeightStore store = WeightStore::open(dir);
    // Check everything before uploading anything: a bad checkpoint fails fast and names the
    // first offending tensor.
    for (const WeightSpec& spec : llama_weight_specs(config_)) {
      LLMCORE_CHECK_ARG(store.has(spec.name), "checkpoint '", dir, "' is missing tensor '",
                        spec.name, "' (expected shape ", shape_str(spec.shape), ")");
      const Tensor t = store.get(spec.name);
      LLMCORE_CHECK_ARG(t.shape() == spec.shape, "checkpoint '", dir, "': tensor '", spec.name,
                        "' has shape ", shape_str(t.shape()), ", expected ", shape_str(spec.shape));
      LLMCORE_CHECK_ARG(is_float_dtype(t.dtype()), "checkpoint '", dir, "': tensor '", spec.name,
                        "' has dtype ", dtype_name(t.dtype()),
                        ", expected float32, float16 or bfloat16");
    }
    // This rank's part of a (mmapped) checkpoint tensor: only its slice is read and copied.
    auto part_of = [&](const std::string& name) {
      const Tensor full = store.get(name);
      if (tp.size == 1) return full;
      const parallel::TensorShard sh = shard_of(name);
      Tensor part = parallel::take_shard(full, sh);
      const int64_t want = part.defined() ? rows_of(name, sh) : 0;
      if (!part.defined() || part.dim(0) == want) return part;
      Shape padded = part.shape();
      padded[0] = want;
      Tensor out = Tensor::empty(padded, part.dtype());
      std::memset(out.data(), 0, out.nbytes());
      std::memcpy(out.data(), part.data(), part.nbytes());
      return out;
    };
    load([&](const std::vector<std::string>& names) {
      if (names.size() == 1) {
        const Tensor part = part_of(names[0]);
        return part.defined() ? backend_.load_weight(part) : Tensor();
      }
      std::vector<Tensor> parts;
      for (const std::string& n : names) parts.push_back(part_of(n));
      return backend_.load_weight(concat_rows(parts));
    });
  }

  // Positions index the table directly, so it covers every position the model was built for.
  const Tensor host_cos_sin = build_rope_cos_sin(config_, config_.max_position_embeddings);
  cos_sin_ = backend_.empty(host_cos_sin.shape(), DType::kF32);
  backend_.copy(cos_sin_, host_cos_sin);
}

void LlamaModel::load(const std::function<Tensor(const std::vector<std::string>&)>& upload_rows) {
  // upload_rows(names): the named weights stacked along rows, on the backend (shapes were checked).
  auto upload = [&](const std::string& name) { return upload_rows({name}); };
  auto upload_fused = [&](const std::vector<std::string>& names) { return upload_rows(names); };

  embed_tokens_ = upload("model.embed_tokens.weight");
  layers_.resize(static_cast<size_t>(config_.num_hidden_layers));
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    Layer& layer = layers_[static_cast<size_t>(l)];
    const std::string attn = layer_prefix(l) + "self_attn.";
    const std::string mlp = layer_prefix(l) + "mlp.";
    layer.input_layernorm = upload(layer_prefix(l) + "input_layernorm.weight");
    layer.qkv_proj =
        upload_fused({attn + "q_proj.weight", attn + "k_proj.weight", attn + "v_proj.weight"});
    if (config_.qkv_bias) {
      layer.qkv_bias =
          upload_fused({attn + "q_proj.bias", attn + "k_proj.bias", attn + "v_proj.bias"});
    }
    layer.o_proj = upload(attn + "o_proj.weight");
    if (config_.o_bias) layer.o_bias = upload(attn + "o_proj.bias");
    layer.post_attention_layernorm = upload(layer_prefix(l) + "post_attention_layernorm.weight");
    layer.gate_up_proj = upload_fused({mlp + "gate_proj.weight", mlp + "up_proj.weight"});
    layer.down_proj = upload(mlp + "down_proj.weight");
    if (config_.mlp_bias) {
      layer.gate_up_bias = upload_fused({mlp + "gate_proj.bias", mlp + "up_proj.bias"});
      layer.down_bias = upload(mlp + "down_proj.bias");
    }
  }
  norm_ = upload("model.norm.weight");
  lm_head_ = config_.tie_word_embeddings ? embed_tokens_ : upload("lm_head.weight");
}

Tensor LlamaModel::forward(const ForwardInput& input, KVCache& kv_cache) {
  const int64_t num_tokens = input.token_ids.numel();
  const int64_t num_logits = input.logits_indices.numel();
  LLMCORE_CHECK(input.token_ids.ndim() == 1 && num_tokens > 0, "token_ids ",
                shape_str(input.token_ids.shape()));
  LLMCORE_CHECK(input.positions.shape() == input.token_ids.shape(), "positions ",
                shape_str(input.positions.shape()), " vs token_ids ",
                shape_str(input.token_ids.shape()));
  LLMCORE_CHECK(input.logits_indices.ndim() == 1, "logits_indices ",
                shape_str(input.logits_indices.shape()));
  LLMCORE_CHECK(kv_cache.k.size() == layers_.size() && kv_cache.v.size() == layers_.size(),
                "kv cache has ", kv_cache.k.size(), "/", kv_cache.v.size(), " layers, model has ",
                layers_.size());

  const DType act = backend_.activation_dtype();
  const int64_t hd = config_.hidden_size;
  const bool sharded = tp_.size > 1;
  // Row-parallel outputs (o_proj, down_proj) and the vocab-parallel embedding hold this rank's
  // partial sums until the all-reduce.
  auto all_reduce = [&](Tensor& x) {
    if (sharded) tp_.comm->all_reduce_sum(x);
  };
  const float eps = static_cast<float>(config_.rms_norm_eps);
  // After a row-parallel layer: residual += all_reduce(x); x = norm(residual), fused where the
  // communicator can (one kernel per layer output in decode steps on GPUs).
  auto all_reduce_add_rms_norm = [&](Tensor& x, Tensor& residual, const Tensor& weight) {
    if (sharded && tp_.comm->all_reduce_add_rms_norm(x, residual, weight, eps)) return;
    all_reduce(x);
    backend_.add_rms_norm(x, residual, weight, eps);
  };
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(config_.head_dim)));
  const int sliding_window = static_cast<int>(config_.sliding_window);

  // vLLM-style residual stream: `residual` carries the running sum, `h` the normalized input of
  // the next sub-block; add_rms_norm fuses "residual += h; h = norm(residual)".
  Tensor residual = backend_.empty({num_tokens, hd}, act);                  // [T, Hd]
  Tensor h = backend_.empty({num_tokens, hd}, act);                         // [T, Hd]
  Tensor qkv = backend_.empty({num_tokens, attn_shape_.qkv_width()}, act);  // [T, (Hq+2Hkv)*D]
  const int64_t q_width = static_cast<int64_t>(attn_shape_.num_heads) * attn_shape_.head_dim;
  Tensor attn = backend_.empty({num_tokens, q_width}, act);                    // [T, Hq*D]
  Tensor gate_up = backend_.empty({num_tokens, 2 * intermediate_size_}, act);  // [T, 2I]
  Tensor mlp_act = backend_.empty({num_tokens, intermediate_size_}, act);      // [T, I]

  auto bias = [](const Tensor& b) { return b.defined() ? &b : nullptr; };
  const RowKinds* kinds = &input.row_kinds;  // generated-token rows may take another GEMM kernel

  backend_.embedding(residual, input.token_ids, embed_tokens_, vocab_start_, config_.vocab_size);
  all_reduce(residual);
  backend_.rms_norm(h, residual, layers_[0].input_layernorm, eps);
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& layer = layers_[l];
    backend_.linear(qkv, h, layer.qkv_proj, bias(layer.qkv_bias), kinds);
    // The cache must hold this step's (rotated) k and v before attention reads the context from it.
    backend_.rotary_embedding_and_write_kv(qkv, input.positions, cos_sin_, kv_cache.k[l], kv_cache.v[l],
                                           input.attn.slot_mapping, attn_shape_);
    backend_.paged_attention(attn, qkv, kv_cache.k[l], kv_cache.v[l], input.attn, attn_shape_,
                             scale, sliding_window);
    backend_.linear(h, attn, layer.o_proj, bias(layer.o_bias), kinds);
    all_reduce_add_rms_norm(h, residual, layer.post_attention_layernorm);

    backend_.linear_silu_and_mul(mlp_act, gate_up, h, layer.gate_up_proj, bias(layer.gate_up_bias), kinds);
    backend_.linear(h, mlp_act, layer.down_proj, bias(layer.down_bias), kinds);
    const Tensor& next_norm = l + 1 < layers_.size() ? layers_[l + 1].input_layernorm : norm_;
    all_reduce_add_rms_norm(h, residual, next_norm);
  }

  Tensor logits = input.logits_out.defined()
                      ? input.logits_out
                      : backend_.empty({num_logits, config_.vocab_size}, DType::kF32);  // [L, V]
  LLMCORE_CHECK(logits.dtype() == DType::kF32 && logits.shape() == Shape({num_logits, config_.vocab_size}),
                "logits_out must be float32 [", num_logits, ", ", config_.vocab_size, "], got ",
                shape_str(logits.shape()));
  if (num_logits == 0) return logits;                   // a step that only fills the cache
  Tensor rows = backend_.empty({num_logits, hd}, act);  // [L, Hd]
  backend_.gather_rows(rows, h, input.logits_indices);
  if (!sharded) {
    backend_.linear(logits, rows, lm_head_, nullptr, &input.logits_row_kinds);
    return logits;
  }
  Tensor part = backend_.empty({num_logits, lm_head_.dim(0)}, DType::kF32);  // [L, Vr]: this rank's ids
  backend_.linear(part, rows, lm_head_, nullptr, &input.logits_row_kinds);
  tp_.comm->all_gather_columns(logits, part);
  return logits;
}

}  // namespace llmcore
