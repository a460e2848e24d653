// Helpers of the paged-attention kernel tests: device buffers, 16-bit conversions, and attention
// problems (sequences of random q/k/v laid out in a shuffled paged cache) that run both on the
// CUDA kernel and on the CPU reference backend from the same values.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "kernels/attention/attention.h"

namespace llmcore::attn_test {

inline bool cuda_available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define ATTN_SKIP_WITHOUT_CUDA() \
  if (!::llmcore::attn_test::cuda_available()) GTEST_SKIP() << "no CUDA device"

inline void cuda_ok(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

// Uninitialized device tensor, freed with the last copy of the Tensor.
inline Tensor device_empty(Shape shape, DType dtype) {
  Tensor probe = Tensor::wrap(nullptr, shape, dtype, Device::kCUDA);
  void* p = nullptr;
  cuda_ok(cudaMalloc(&p, std::max<size_t>(probe.nbytes(), 16)), "cudaMalloc");
  std::shared_ptr<void> keep(p, [](void* q) { cudaFree(q); });
  return Tensor::wrap(p, std::move(shape), dtype, Device::kCUDA, keep);
}

inline Tensor to_device(const Tensor& host) {
  Tensor d = device_empty(host.shape(), host.dtype());
  if (host.nbytes() > 0)
    cuda_ok(cudaMemcpy(d.data(), host.data(), host.nbytes(), cudaMemcpyHostToDevice), "upload");
  return d;
}

inline Tensor to_host(const Tensor& dev) {
  Tensor h = Tensor::empty(dev.shape(), dev.dtype());
  if (dev.nbytes() > 0)
    cuda_ok(cudaMemcpy(h.data(), dev.data(), dev.nbytes(), cudaMemcpyDeviceToHost), "download");
  return h;
}

inline uint16_t to_bits(float x, DType dtype) {
  return dtype == DType::kBF16 ? float_to_bf16(x) : float_to_fp16(x);
}
inline float from_bits(uint16_t b, DType dtype) {
  return dtype == DType::kBF16 ? bf16_to_float(b) : fp16_to_float(b);
}
// x rounded to the nearest value of a 16-bit float dtype.
inline float round_to(float x, DType dtype) { return from_bits(to_bits(x, dtype), dtype); }

// A float32 host tensor converted to `dtype` on the device.
inline Tensor to_device_half(const Tensor& f32, DType dtype) {
  Tensor h = Tensor::empty(f32.shape(), dtype);
  const float* src = f32.data_as<float>();
  uint16_t* dst = h.data_as<uint16_t>();
  for (int64_t i = 0; i < f32.numel(); ++i) dst[i] = to_bits(src[i], dtype);
  return to_device(h);
}

// A 16-bit device tensor back as floats.
inline std::vector<float> half_to_floats(const Tensor& dev) {
  const Tensor h = to_host(dev);
  std::vector<float> out(static_cast<size_t>(h.numel()));
  const uint16_t* src = h.data_as<uint16_t>();
  for (size_t i = 0; i < out.size(); ++i) out[i] = from_bits(src[i], h.dtype());
  return out;
}

inline Tensor host_ints(const std::vector<int32_t>& values) {
  Tensor t = Tensor::empty({static_cast<int64_t>(values.size())}, DType::kI32);
  if (!values.empty()) std::memcpy(t.data(), values.data(), values.size() * sizeof(int32_t));
  return t;
}

// One sequence's q, k and v at every position, already rounded to the kernel's dtype so the
// CPU reference (float32) and the kernel (16-bit) see the same numbers.
struct SeqData {
  int len = 0;
  std::vector<float> q;  // [len, Hq, D]
  std::vector<float> k;  // [len, Hkv, D]
  std::vector<float> v;  // [len, Hkv, D]
};

// Queries spread over [-q_range, q_range) so the softmax is far from uniform; k, v in [-1, 1).
inline SeqData make_seq(const AttnShape& shape, int len, DType dtype, std::mt19937& rng,
                        float q_range = 4.0f) {
  SeqData s;
  s.len = len;
  const size_t d = shape.head_dim;
  s.q.resize(static_cast<size_t>(len) * shape.num_heads * d);
  s.k.resize(static_cast<size_t>(len) * shape.num_kv_heads * d);
  s.v.resize(s.k.size());
  std::uniform_real_distribution<float> qd(-q_range, q_range), kv(-1.0f, 1.0f);
  for (float& x : s.q) x = round_to(qd(rng), dtype);
  for (float& x : s.k) x = round_to(kv(rng), dtype);
  for (float& x : s.v) x = round_to(kv(rng), dtype);
  return s;
}

// Makes key `key_pos` dominate the scores of query (query_pos, head): k = sign(q) elementwise,
// a score of sum |q| * scale (~20 for D = 128), far above the others (~N(0, 1.3)). If the
// kernel drops that key (or wrongly includes it), the head's output moves by ~|v| ~ 0.5.
inline void add_spike(SeqData& s, const AttnShape& shape, int key_pos, int query_pos, int head) {
  const int d = shape.head_dim, group = shape.num_heads / shape.num_kv_heads;
  const float* q = s.q.data() + (static_cast<size_t>(query_pos) * shape.num_heads + head) * d;
  float* k = s.k.data() + (static_cast<size_t>(key_pos) * shape.num_kv_heads + head / group) * d;
  for (int i = 0; i < d; ++i) k[i] = q[i] >= 0.0f ? 1.0f : -1.0f;
}

// One sequence of a step: its query tokens are positions [context_len, context_len +
// query_len) of `data`; the cache holds positions [0, context_len + query_len).
struct StepSeq {
  const SeqData* data;
  int context_len;
  int query_len;
  int seq_len() const { return context_len + query_len; }
};

// A step as both backends take it: float32 host tensors for the CPU reference, 16-bit device
// tensors for the kernel. Blocks come from a shuffled pool; unused blocks, the tail of each
// last block and a spare -1 column of the block table make stray reads visible (NaN).
struct Problem {
  AttnShape shape;
  DType dtype = DType::kBF16;
  int block_size = 0;
  int num_tokens = 0;
  std::vector<StepSeq> seqs;
  Tensor qkv, k_cache, v_cache;  // host float32: [T, W], [NB, Hkv, BS, D] x 2
  AttentionMetadata meta;        // host int32
  Tensor qkv_dev, k_cache_dev, v_cache_dev;
  AttentionMetadata meta_dev;
};

// With share_blocks, step sequences over the same SeqData share one set of blocks holding its
// longest step's positions, as prefix caching shares blocks; a shorter step's last block then
// holds real (later) tokens past its seq_len instead of NaN.
inline Problem make_problem(const AttnShape& shape, int block_size, DType dtype,
                            std::vector<StepSeq> seqs, std::mt19937& rng, int spare_blocks = 7,
                            bool share_blocks = false) {
  Problem p;
  p.shape = shape;
  p.dtype = dtype;
  p.block_size = block_size;
  p.seqs = std::move(seqs);
  const int num_seqs = static_cast<int>(p.seqs.size());
  const int hq = shape.num_heads, hkv = shape.num_kv_heads, d = shape.head_dim;
  const int64_t width = shape.qkv_width();

  // Cache owners: one per step sequence, or one per SeqData with share_blocks.
  std::vector<int> owner(num_seqs);
  std::vector<int> owner_len;  // positions each owner stores
  std::vector<const SeqData*> owner_data;
  int max_q = 0, min_q = 1, max_len = 0;
  std::vector<int32_t> start = {0}, lens;
  for (int s = 0; s < num_seqs; ++s) {
    const StepSeq& ss = p.seqs[s];
    if (ss.seq_len() > ss.data->len) throw std::runtime_error("step sequence longer than its data");
    int o = -1;
    if (share_blocks)
      for (size_t k = 0; k < owner_data.size(); ++k)
        if (owner_data[k] == ss.data) o = static_cast<int>(k);
    if (o < 0) {
      o = static_cast<int>(owner_data.size());
      owner_data.push_back(ss.data);
      owner_len.push_back(0);
    }
    owner[s] = o;
    owner_len[o] = std::max(owner_len[o], ss.seq_len());
    max_q = std::max(max_q, ss.query_len);
    min_q = s == 0 ? ss.query_len : std::min(min_q, ss.query_len);
    max_len = std::max(max_len, ss.seq_len());
    start.push_back(start.back() + ss.query_len);
    lens.push_back(ss.seq_len());
  }
  p.num_tokens = start.back();
  int total_blocks = 0, max_blocks = 0;
  for (int len : owner_len) {
    total_blocks += (len + block_size - 1) / block_size;
    max_blocks = std::max(max_blocks, (len + block_size - 1) / block_size);
  }
  const int num_blocks = total_blocks + spare_blocks;
  std::vector<int32_t> pool(num_blocks);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);

  const float nan = std::numeric_limits<float>::quiet_NaN();
  p.k_cache = Tensor::empty({num_blocks, hkv, block_size, d}, DType::kF32);
  p.v_cache = Tensor::empty({num_blocks, hkv, block_size, d}, DType::kF32);
  std::fill_n(p.k_cache.data_as<float>(), p.k_cache.numel(), nan);
  std::fill_n(p.v_cache.data_as<float>(), p.v_cache.numel(), nan);
  std::vector<std::vector<int32_t>> owner_blocks(owner_data.size());
  size_t next = 0;
  for (size_t o = 0; o < owner_data.size(); ++o) {
    const SeqData& data = *owner_data[o];
    for (int b = 0; b * block_size < owner_len[o]; ++b) owner_blocks[o].push_back(pool[next++]);
    for (int j = 0; j < owner_len[o]; ++j) {
      const int64_t block = owner_blocks[o][j / block_size];
      for (int h = 0; h < hkv; ++h) {
        const int64_t at = ((block * hkv + h) * block_size + j % block_size) * d;
        const size_t from = (static_cast<size_t>(j) * hkv + h) * d;
        std::copy_n(data.k.data() + from, d, p.k_cache.data_as<float>() + at);
        std::copy_n(data.v.data() + from, d, p.v_cache.data_as<float>() + at);
      }
    }
  }

  max_blocks += 1;  // a -1 column past every table's end
  std::vector<int32_t> tables(static_cast<size_t>(num_seqs) * max_blocks, -1);
  p.qkv = Tensor::empty({p.num_tokens, width}, DType::kF32);
  float* qkv = p.qkv.data_as<float>();
  for (int s = 0; s < num_seqs; ++s) {
    const StepSeq& ss = p.seqs[s];
    for (int b = 0; b * block_size < ss.seq_len(); ++b)
      tables[static_cast<size_t>(s) * max_blocks + b] = owner_blocks[owner[s]][b];
    // qkv rows: this step's q; the k and v parts are NaN (the kernel must read keys from the
    // cache, never from qkv).
    for (int i = 0; i < ss.query_len; ++i) {
      const int pos = ss.context_len + i;
      float* row = qkv + static_cast<int64_t>(start[s] + i) * width;
      std::copy_n(ss.data->q.data() + static_cast<size_t>(pos) * hq * d,
                  static_cast<size_t>(hq) * d, row);
      for (int64_t x = static_cast<int64_t>(hq) * d; x < width; ++x) row[x] = nan;
    }
  }

  p.meta.num_seqs = num_seqs;
  p.meta.max_query_len = max_q;
  p.meta.min_query_len = min_q;
  p.meta.max_seq_len = max_len;
  p.meta.query_start_loc = host_ints(start);
  p.meta.seq_lens = host_ints(lens);
  p.meta.block_tables = host_ints(tables).view({num_seqs, max_blocks});
  p.meta.slot_mapping = host_ints(std::vector<int32_t>(p.num_tokens, -1));

  p.qkv_dev = to_device_half(p.qkv, dtype);
  p.k_cache_dev = to_device_half(p.k_cache, dtype);
  p.v_cache_dev = to_device_half(p.v_cache, dtype);
  p.meta_dev = p.meta;
  p.meta_dev.query_start_loc = to_device(p.meta.query_start_loc);
  p.meta_dev.seq_lens = to_device(p.meta.seq_lens);
  p.meta_dev.block_tables = to_device(p.meta.block_tables);
  p.meta_dev.slot_mapping = to_device(p.meta.slot_mapping);
  return p;
}

inline float default_scale(const AttnShape& shape) {
  return 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
}

// The kernel's output [T, Hq * D] as floats. Output and workspace start as NaN (all-ones
// bytes), so an element nobody wrote, or a partition the combine reads without it having been
// written, shows up.
inline std::vector<float> run_gpu(const Problem& p, float scale, int window) {
  Tensor out = device_empty({p.num_tokens, int64_t{p.shape.num_heads} * p.shape.head_dim}, p.dtype);
  cuda_ok(cudaMemset(out.data(), 0xff, out.nbytes()), "poison out");
  const size_t ws_bytes = kernels::paged_attention_workspace_bytes(p.meta_dev, p.shape);
  Tensor ws = device_empty({static_cast<int64_t>(ws_bytes)}, DType::kU8);
  cuda_ok(cudaMemset(ws.data(), 0xff, ws.nbytes()), "poison workspace");
  kernels::paged_attention(out, p.qkv_dev, p.k_cache_dev, p.v_cache_dev, p.meta_dev, p.shape,
                           scale, window, ws_bytes > 0 ? ws.data() : nullptr, ws_bytes, nullptr);
  cuda_ok(cudaGetLastError(), "paged_attention launch");
  cuda_ok(cudaDeviceSynchronize(), "paged_attention run");
  return half_to_floats(out);
}

inline Backend& cpu_backend() {
  static std::unique_ptr<Backend> be = create_cpu_backend(0);
  return *be;
}

// The CPU reference backend's output [T, Hq * D] on the same (float32) values.
inline std::vector<float> run_cpu(const Problem& p, float scale, int window) {
  Tensor out = Tensor::empty({p.num_tokens, int64_t{p.shape.num_heads} * p.shape.head_dim},
                             DType::kF32);
  cpu_backend().paged_attention(out, p.qkv, p.k_cache, p.v_cache, p.meta, p.shape, scale, window);
  const float* o = out.data_as<float>();
  return std::vector<float>(o, o + out.numel());
}

struct ErrorStats {
  double max_abs = 0.0;   // max |gpu - cpu|
  double mean_abs = 0.0;  // mean |gpu - cpu|
  double ref_scale = 0.0; // max |cpu|
  int64_t non_finite = 0; // gpu elements that are NaN or inf
  int64_t worst = -1;     // index of max_abs
};

inline ErrorStats compare(const std::vector<float>& gpu, const std::vector<float>& cpu) {
  ErrorStats e;
  if (gpu.size() != cpu.size()) throw std::runtime_error("output sizes differ");
  double sum = 0.0;
  for (size_t i = 0; i < gpu.size(); ++i) {
    e.ref_scale = std::max(e.ref_scale, std::abs(double(cpu[i])));
    if (!std::isfinite(gpu[i])) {
      ++e.non_finite;
      continue;
    }
    const double err = std::abs(double(gpu[i]) - cpu[i]);
    sum += err;
    if (err > e.max_abs) {
      e.max_abs = err;
      e.worst = static_cast<int64_t>(i);
    }
  }
  e.mean_abs = gpu.empty() ? 0.0 : sum / gpu.size();
  return e;
}

// bf16 outputs of a softmax-weighted mean of values in [-1, 1): the 16-bit weights (2^-9
// relative) and the output rounding (2^-9 relative) bound the error by a few 1e-3; 1e-2 of the
// output scale leaves margin while a dropped or extra key of any weight above ~1% fails.
inline void expect_close(const Problem& p, float scale, int window, double max_tol = 1e-2,
                         double mean_tol = 1e-3) {
  const std::vector<float> gpu = run_gpu(p, scale, window);
  const std::vector<float> cpu = run_cpu(p, scale, window);
  const ErrorStats e = compare(gpu, cpu);
  const double out_scale = std::max(1.0, e.ref_scale);
  EXPECT_EQ(e.non_finite, 0) << "kernel left NaN/inf in the output";
  const int64_t row_width = int64_t{p.shape.num_heads} * p.shape.head_dim;
  EXPECT_LE(e.max_abs, max_tol * out_scale)
      << "worst at token " << (e.worst < 0 ? -1 : e.worst / row_width) << ", head "
      << (e.worst < 0 ? -1 : (e.worst % row_width) / p.shape.head_dim) << ": gpu "
      << (e.worst < 0 ? 0.f : gpu[e.worst]) << " cpu " << (e.worst < 0 ? 0.f : cpu[e.worst]);
  EXPECT_LE(e.mean_abs, mean_tol * out_scale);
}

// Output rows [first, first + count) of a [T, Hq * D] result.
inline std::vector<float> rows(const std::vector<float>& out, const AttnShape& shape, int first,
                               int count) {
  const size_t w = static_cast<size_t>(shape.num_heads) * shape.head_dim;
  return std::vector<float>(out.begin() + first * w, out.begin() + (first + count) * w);
}

// Bitwise equality of float vectors (NaN payloads included).
inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

}  // namespace llmcore::attn_test
