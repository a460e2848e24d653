// Helpers for the Llama-family model tests: the HF tensor list written out independently of
// model/llama.cpp, random checkpoints, step inputs for the paged-attention metadata, and a naive
// single-sequence reference forward (plain loops, contiguous KV, double accumulation).
#pragma once

#include <cmath>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "model/config.h"
#include "model/model.h"

namespace llmcore {
namespace testing_util {

// The checkpoint tensors of a Llama/Mistral/Qwen2 model, as HF's modeling code names them.
inline std::vector<std::pair<std::string, Shape>> hf_tensor_specs(const ModelConfig& c) {
  const int64_t hd = c.hidden_size, q = c.num_attention_heads * c.head_dim,
                kv = c.num_key_value_heads * c.head_dim, inter = c.intermediate_size;
  std::vector<std::pair<std::string, Shape>> s = {{"model.embed_tokens.weight", {c.vocab_size, hd}},
                                                  {"model.norm.weight", {hd}}};
  if (!c.tie_word_embeddings) s.push_back({"lm_head.weight", {c.vocab_size, hd}});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    s.push_back({p + "input_layernorm.weight", {hd}});
    s.push_back({p + "post_attention_layernorm.weight", {hd}});
    s.push_back({p + "self_attn.q_proj.weight", {q, hd}});
    s.push_back({p + "self_attn.k_proj.weight", {kv, hd}});
    s.push_back({p + "self_attn.v_proj.weight", {kv, hd}});
    s.push_back({p + "self_attn.o_proj.weight", {hd, q}});
    s.push_back({p + "mlp.gate_proj.weight", {inter, hd}});
    s.push_back({p + "mlp.up_proj.weight", {inter, hd}});
    s.push_back({p + "mlp.down_proj.weight", {hd, inter}});
    if (c.qkv_bias) {
      s.push_back({p + "self_attn.q_proj.bias", {q}});
      s.push_back({p + "self_attn.k_proj.bias", {kv}});
      s.push_back({p + "self_attn.v_proj.bias", {kv}});
    }
    if (c.o_bias) s.push_back({p + "self_attn.o_proj.bias", {hd}});
    if (c.mlp_bias) {
      s.push_back({p + "mlp.gate_proj.bias", {inter}});
      s.push_back({p + "mlp.up_proj.bias", {inter}});
      s.push_back({p + "mlp.down_proj.bias", {hd}});
    }
  }
  return s;
}

inline Tensor float_tensor(const Shape& shape, DType dtype, const std::vector<float>& values) {
  Tensor t = Tensor::empty(shape, dtype);
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::kF32) t.data_as<float>()[i] = values[i];
    if (dtype == DType::kF16) t.data_as<uint16_t>()[i] = float_to_fp16(values[i]);
    if (dtype == DType::kBF16) t.data_as<uint16_t>()[i] = float_to_bf16(values[i]);
  }
  return t;
}

inline std::vector<double> to_doubles(const Tensor& t) {
  std::vector<double> out(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < out.size(); ++i) {
    switch (t.dtype()) {
      case DType::kF32:
        out[i] = t.data_as<float>()[i];
        break;
      case DType::kF16:
        out[i] = fp16_to_float(t.data_as<uint16_t>()[i]);
        break;
      case DType::kBF16:
        out[i] = bf16_to_float(t.data_as<uint16_t>()[i]);
        break;
      default:
        throw std::runtime_error("to_doubles: not a float tensor");
    }
  }
  return out;
}

// Random weights large enough that attention is far from uniform: matrices and biases uniform
// in [-0.15, 0.15], RMSNorm weights in [0.7, 1.3].
inline std::map<std::string, Tensor> random_checkpoint(const ModelConfig& c, DType dtype,
                                                       uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::map<std::string, Tensor> out;
  for (const auto& spec : hf_tensor_specs(c)) {
    const bool is_norm = spec.first.find("norm.weight") != std::string::npos;
    std::uniform_real_distribution<float> dist(is_norm ? 0.7f : -0.15f, is_norm ? 1.3f : 0.15f);
    int64_t n = 1;
    for (int64_t d : spec.second) n *= d;
    std::vector<float> values(static_cast<size_t>(n));
    for (float& v : values) v = dist(gen);
    out[spec.first] = float_tensor(spec.second, dtype, values);
  }
  return out;
}

// One sequence's part of a step.
struct SeqChunk {
  std::vector<int32_t> tokens;       // the tokens run this step
  int num_computed = 0;              // tokens already in the cache (their positions come first)
  std::vector<int32_t> block_table;  // cache blocks of the sequence, in position order
  std::vector<int32_t> logits_rows;  // rows of `tokens` whose logits are wanted
};

// The ForwardInput (CPU tensors) for running `seqs` together in one step.
inline ForwardInput make_step(const std::vector<SeqChunk>& seqs, int block_size) {
  auto i32 = [](const std::vector<int32_t>& v, Shape shape) {
    Tensor t = Tensor::empty(std::move(shape), DType::kI32);
    for (size_t i = 0; i < v.size(); ++i) t.data_as<int32_t>()[i] = v[i];
    return t;
  };
  std::vector<int32_t> ids, positions, starts = {0}, lens, slots, logits;
  size_t max_blocks = 0;
  ForwardInput in;
  for (const SeqChunk& s : seqs) {
    for (int32_t r : s.logits_rows) logits.push_back(static_cast<int32_t>(ids.size()) + r);
    for (size_t i = 0; i < s.tokens.size(); ++i) {
      const int pos = s.num_computed + static_cast<int>(i);
      ids.push_back(s.tokens[i]);
      positions.push_back(pos);
      slots.push_back(s.block_table.at(pos / block_size) * block_size + pos % block_size);
    }
    starts.push_back(static_cast<int32_t>(ids.size()));
    lens.push_back(s.num_computed + static_cast<int32_t>(s.tokens.size()));
    max_blocks = std::max(max_blocks, s.block_table.size());
    in.attn.max_query_len = std::max(in.attn.max_query_len, static_cast<int>(s.tokens.size()));
    in.attn.min_query_len = starts.size() == 2 ? static_cast<int>(s.tokens.size())
                                               : std::min(in.attn.min_query_len, static_cast<int>(s.tokens.size()));
    in.attn.max_seq_len = std::max(in.attn.max_seq_len, lens.back());
  }
  std::vector<int32_t> tables;
  for (const SeqChunk& s : seqs) {
    for (size_t b = 0; b < max_blocks; ++b)
      tables.push_back(b < s.block_table.size() ? s.block_table[b] : -1);
  }
  const int64_t num_tokens = static_cast<int64_t>(ids.size()),
                num_seqs = static_cast<int64_t>(seqs.size());
  in.token_ids = i32(ids, {num_tokens});
  in.positions = i32(positions, {num_tokens});
  in.logits_indices = i32(logits, {static_cast<int64_t>(logits.size())});
  in.attn.num_seqs = static_cast<int>(num_seqs);
  in.attn.query_start_loc = i32(starts, {num_seqs + 1});
  in.attn.seq_lens = i32(lens, {num_seqs});
  in.attn.block_tables = i32(tables, {num_seqs, static_cast<int64_t>(max_blocks)});
  in.attn.slot_mapping = i32(slots, {num_tokens});
  return in;
}

inline KVCache make_kv_cache(Backend& backend, const ModelConfig& c, int num_blocks,
                             int block_size) {
  KVCache kv;
  kv.num_blocks = num_blocks;
  kv.block_size = block_size;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const Shape shape = {num_blocks, c.num_key_value_heads, block_size, c.head_dim};
    kv.k.push_back(backend.empty(shape, backend.activation_dtype()));
    kv.v.push_back(backend.empty(shape, backend.activation_dtype()));
  }
  return kv;
}

// Logits [rows][V] of a forward's float32 CPU output.
inline std::vector<std::vector<float>> logits_rows(const Tensor& logits) {
  std::vector<std::vector<float>> out;
  for (int64_t r = 0; r < logits.dim(0); ++r) {
    const float* row = logits.data_as<float>() + r * logits.dim(1);
    out.emplace_back(row, row + logits.dim(1));
  }
  return out;
}

// Reads a checkpoint tensor by HF name as doubles.
using WeightReader = std::function<std::vector<double>(const std::string& name)>;

// HF LlamaForCausalLM forward for one sequence at positions 0..T-1, straight from the modeling
// code: pre-norm blocks, NeoX RoPE with the default frequencies (theta^(-2i/D), divided by the
// linear factor when set), GQA causal softmax attention (optionally windowed), SwiGLU MLP.
// Returns logits [T][V].
inline std::vector<std::vector<double>> reference_forward(const ModelConfig& c,
                                                          const WeightReader& w,
                                                          const std::vector<int32_t>& tokens) {
  const int64_t T = static_cast<int64_t>(tokens.size()), H = c.hidden_size, D = c.head_dim,
                Hq = c.num_attention_heads, Hkv = c.num_key_value_heads, I = c.intermediate_size,
                V = c.vocab_size;
  using Vec = std::vector<double>;
  auto matvec = [](const Vec& m, const Vec& x, int64_t rows, int64_t cols) {
    Vec y(static_cast<size_t>(rows), 0.0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t k = 0; k < cols; ++k) y[r] += m[r * cols + k] * x[k];
    return y;
  };
  auto add_bias = [&](Vec& y, const std::string& name) {
    const Vec b = w(name);
    for (size_t i = 0; i < y.size(); ++i) y[i] += b[i];
  };
  auto rms_norm = [&](const Vec& x, const Vec& g) {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(x.size()) + c.rms_norm_eps);
    Vec y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * g[i];
    return y;
  };
  auto rope = [&](double* x, int64_t pos) {
    const double factor = c.rope_scaling.rope_type == "linear" ? c.rope_scaling.factor : 1.0;
    for (int64_t i = 0; i < D / 2; ++i) {
      const double f =
          std::pow(c.rope_theta, -2.0 * static_cast<double>(i) / static_cast<double>(D)) / factor;
      const double cs = std::cos(static_cast<double>(pos) * f),
                   sn = std::sin(static_cast<double>(pos) * f);
      const double a = x[i], b = x[i + D / 2];
      x[i] = a * cs - b * sn;
      x[i + D / 2] = b * cs + a * sn;
    }
  };

  const Vec embed = w("model.embed_tokens.weight");
  std::vector<Vec> x(static_cast<size_t>(T));  // the residual stream, [T][H]
  for (int64_t t = 0; t < T; ++t)
    x[t] = Vec(embed.begin() + tokens[t] * H, embed.begin() + (tokens[t] + 1) * H);

  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const Vec wq = w(p + "self_attn.q_proj.weight"), wk = w(p + "self_attn.k_proj.weight"),
              wv = w(p + "self_attn.v_proj.weight"), wo = w(p + "self_attn.o_proj.weight"),
              ln1 = w(p + "input_layernorm.weight"), ln2 = w(p + "post_attention_layernorm.weight"),
              wg = w(p + "mlp.gate_proj.weight"), wu = w(p + "mlp.up_proj.weight"),
              wd = w(p + "mlp.down_proj.weight");
    std::vector<Vec> q(T), k(T), v(T);  // contiguous per position: [T][heads * D]
    for (int64_t t = 0; t < T; ++t) {
      const Vec n = rms_norm(x[t], ln1);
      q[t] = matvec(wq, n, Hq * D, H);
      k[t] = matvec(wk, n, Hkv * D, H);
      v[t] = matvec(wv, n, Hkv * D, H);
      if (c.qkv_bias) {
        add_bias(q[t], p + "self_attn.q_proj.bias");
        add_bias(k[t], p + "self_attn.k_proj.bias");
        add_bias(v[t], p + "self_attn.v_proj.bias");
      }
      for (int64_t h = 0; h < Hq; ++h) rope(&q[t][h * D], t);
      for (int64_t h = 0; h < Hkv; ++h) rope(&k[t][h * D], t);
    }
    for (int64_t t = 0; t < T; ++t) {
      Vec attn(static_cast<size_t>(Hq * D), 0.0);
      const int64_t first =
          c.sliding_window > 0 ? std::max<int64_t>(0, t - c.sliding_window + 1) : 0;
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t kvh = h / (Hq / Hkv);
        Vec scores;
        double max_s = -1e300;
        for (int64_t j = first; j <= t; ++j) {
          double s = 0;
          for (int64_t d = 0; d < D; ++d) s += q[t][h * D + d] * k[j][kvh * D + d];
          scores.push_back(s / std::sqrt(static_cast<double>(D)));
          max_s = std::max(max_s, scores.back());
        }
        double denom = 0;
        for (double& s : scores) denom += (s = std::exp(s - max_s));
        for (int64_t j = first; j <= t; ++j)
          for (int64_t d = 0; d < D; ++d)
            attn[h * D + d] += scores[j - first] / denom * v[j][kvh * D + d];
      }
      Vec o = matvec(wo, attn, H, Hq * D);
      if (c.o_bias) add_bias(o, p + "self_attn.o_proj.bias");
      for (int64_t i = 0; i < H; ++i) x[t][i] += o[i];

      const Vec n = rms_norm(x[t], ln2);
      Vec g = matvec(wg, n, I, H), u = matvec(wu, n, I, H);
      if (c.mlp_bias) {
        add_bias(g, p + "mlp.gate_proj.bias");
        add_bias(u, p + "mlp.up_proj.bias");
      }
      Vec a(static_cast<size_t>(I));
      for (int64_t i = 0; i < I; ++i) a[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
      Vec down = matvec(wd, a, H, I);
      if (c.mlp_bias) add_bias(down, p + "mlp.down_proj.bias");
      for (int64_t i = 0; i < H; ++i) x[t][i] += down[i];
    }
  }
  const Vec norm = w("model.norm.weight");
  const Vec head = w(c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
  std::vector<Vec> logits;
  for (int64_t t = 0; t < T; ++t) logits.push_back(matvec(head, rms_norm(x[t], norm), V, H));
  return logits;
}

}  // namespace testing_util
}  // namespace llmcore
