// Kernel microbenchmarks on one GPU, through the CUDA backend's ops (what the model calls):
//   copy          device-to-device copy of 1 GiB: the memory-bandwidth ceiling (read + written)
//   decode_attn   paged attention, decode rows: batch B sequences of context C, one query each;
//                 bytes = the K and V cache read once (+ q and out); GB/s and % of copy
//   prefill_attn  paged attention, one causal prompt of T tokens; FLOPs = 2 T^2 D Hq (QK^T and
//                 PV over the causal half); TFLOP/s
//   linear        out [M, N] = x [M, K] @ W[N, K]^T through the batch-invariant cuBLASLt linear
//                 (the plan for unlabelled rows, and those for prompt rows and for generated rows);
//                 TFLOP/s (benchmarks/kernels.py times torch.matmul on the same shapes)
//   skinny        the decode GEMM (kernels/linear/skinny_gemm.cu) at M = 1..256, every tiling,
//                 against the cuBLASLt linear, weights cycled so that none is read from L2
//   sampling      the GPU sampler (kernels/sampling/sampler.cu) on R rows of Llama-3's 128256
//                 float logits: greedy, a random draw (temperature 1), a draw with top-p 0.9;
//                 also as passes over the logits (ms / the time to read them once at copy speed)
// Inputs are random (never zeros), timing is CUDA events around `reps` launches after warm-up,
// the median of `trials` such timings. Prints one JSON object to stdout.
//
//   bench_kernels [--heads 32] [--kv-heads 8] [--head-dim 128] [--block-size 16]
//                 [--attention-only 1]      copy and attention only
//                 [--sampling-only 1]       copy and sampling only
//                 [--prefill-only 1]        copy and prompt (prefill) attention only
//                 [--prefill-tokens T]      only the T-token prefill attention, three launches
//                                           (for a profiler: ncu --launch-skip 2 --launch-count 1)
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "core/dtype.h"
#include "kernels/common/cuda_check.h"
#include "kernels/kernels.h"

using namespace llmcore;

namespace {

struct Args {
  int heads = 32, kv_heads = 8, head_dim = 128, block_size = 16;
  int attention_only = 0, prefill_tokens = 0, sampling_only = 0, prefill_only = 0;
};

// Median over `trials` of the mean time (ms) of `reps` calls of fn, after `warmup` calls.
double time_ms(CudaBackend& be, const std::function<void()>& fn, int reps = 20, int trials = 7, int warmup = 3) {
  for (int i = 0; i < warmup; ++i) fn();
  be.synchronize();
  cudaEvent_t a, b;
  LLMCORE_CUDA_CHECK(cudaEventCreate(&a));
  LLMCORE_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<double> ms;
  for (int t = 0; t < trials; ++t) {
    LLMCORE_CUDA_CHECK(cudaEventRecord(a, be.stream()));
    for (int i = 0; i < reps; ++i) fn();
    LLMCORE_CUDA_CHECK(cudaEventRecord(b, be.stream()));
    LLMCORE_CUDA_CHECK(cudaEventSynchronize(b));
    float e = 0;
    LLMCORE_CUDA_CHECK(cudaEventElapsedTime(&e, a, b));
    ms.push_back(e / reps);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  be.synchronize();
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// A device tensor of random bf16 values in [-1, 1).
Tensor random_bf16(CudaBackend& be, Shape shape, std::mt19937& rng) {
  Tensor host = Tensor::empty(shape, DType::kBF16);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  uint16_t* p = host.data_as<uint16_t>();
  for (int64_t i = 0; i < host.numel(); ++i) p[i] = float_to_bf16(dist(rng));
  Tensor dev = be.empty(shape, DType::kBF16);
  be.copy(dev, host);
  return dev;
}

// The sampler on `rows` rows of random logits (N(0, 3^2): a spread like a model's), every row of
// one mode; prints one JSON entry per (rows, mode).
void time_sampling(CudaBackend& be, double copy_gbs, std::mt19937& rng, bool first) {
  constexpr int kVocab = 128256;
  for (int rows : {1, 64, 256}) {
    Tensor host = Tensor::empty({rows, kVocab}, DType::kF32);
    std::normal_distribution<float> dist(0.0f, 3.0f);
    float* p = host.data_as<float>();
    for (int64_t i = 0; i < host.numel(); ++i) p[i] = dist(rng);
    Tensor logits = be.empty({rows, kVocab}, DType::kF32);
    be.copy(logits, host);
    const int64_t row_words = (sizeof(kernels::GpuSampleRow) + 3) / 4;
    const int64_t result_words = (sizeof(kernels::GpuSampleResult) + 3) / 4;
    Tensor d_rows = be.empty({rows * row_words}, DType::kI32);
    Tensor d_results = be.empty({rows * result_words}, DType::kI32);
    struct Mode {
      const char* name;
      int32_t mode;
      float top_p;
    };
    for (const Mode& m : {Mode{"greedy", kernels::kSampleGreedy, 1.0f}, Mode{"random", kernels::kSampleRandom, 1.0f},
                          Mode{"random_top_p_0.9", kernels::kSampleRandom, 0.9f}}) {
      std::vector<kernels::GpuSampleRow> rs(rows);
      std::uniform_real_distribution<double> u(0.0, 1.0);
      for (int r = 0; r < rows; ++r) {
        rs[r].logits = logits.data_as<float>() + static_cast<int64_t>(r) * kVocab;
        rs[r].mode = m.mode;
        rs[r].top_p = m.top_p;
        rs[r].u = u(rng);
      }
      LLMCORE_CUDA_CHECK(cudaMemcpy(d_rows.data(), rs.data(), rs.size() * sizeof(rs[0]), cudaMemcpyHostToDevice));
      const auto* dr = static_cast<const kernels::GpuSampleRow*>(d_rows.data());
      auto* dres = static_cast<kernels::GpuSampleResult*>(d_results.data());
      const double ms = time_ms(be, [&] { kernels::sample_rows(dr, dres, rows, kVocab, be.stream()); });
      const double read_ms = rows * static_cast<double>(kVocab) * 4 / (copy_gbs * 1e9 / 2) * 1e3;
      std::printf("%s{\"rows\": %d, \"mode\": \"%s\", \"ms\": %.4f, \"us_per_row\": %.2f, \"passes\": %.1f}",
                  first ? "" : ", ", rows, m.name, ms, ms * 1e3 / rows, ms / read_ms);
      first = false;
      std::fflush(stdout);
    }
  }
}

Tensor device_i32(CudaBackend& be, const std::vector<int32_t>& v, Shape shape) {
  Tensor host = Tensor::wrap(const_cast<int32_t*>(v.data()), shape, DType::kI32);
  Tensor dev = be.empty(shape, DType::kI32);
  be.copy(dev, host);
  return dev;
}

// Attention over `lens` sequences whose last `query_lens` tokens are the queries; block tables
// are a random permutation of the cache blocks. Returns the median ms.
double time_attention(CudaBackend& be, const Args& a, const std::vector<int>& lens,
                      const std::vector<int>& query_lens, std::mt19937& rng,
                      int profile_launches = 0) {
  const int S = static_cast<int>(lens.size());
  int max_blocks = 0, total_blocks = 0, T = 0, max_len = 0, max_q = 0, min_q = 0;
  for (int s = 0; s < S; ++s) {
    const int nb = (lens[s] + a.block_size - 1) / a.block_size;
    max_blocks = std::max(max_blocks, nb);
    total_blocks += nb;
    T += query_lens[s];
    max_len = std::max(max_len, lens[s]);
    max_q = std::max(max_q, query_lens[s]);
    min_q = s == 0 ? query_lens[s] : std::min(min_q, query_lens[s]);
  }
  std::vector<int32_t> perm(total_blocks);
  for (int i = 0; i < total_blocks; ++i) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<int32_t> tables(static_cast<size_t>(S) * max_blocks, -1), qsl = {0}, seq_lens;
  int next = 0;
  for (int s = 0; s < S; ++s) {
    const int nb = (lens[s] + a.block_size - 1) / a.block_size;
    for (int b = 0; b < nb; ++b) tables[static_cast<size_t>(s) * max_blocks + b] = perm[next++];
    qsl.push_back(qsl.back() + query_lens[s]);
    seq_lens.push_back(lens[s]);
  }
  AttnShape shape{a.heads, a.kv_heads, a.head_dim};
  Tensor k = random_bf16(be, {total_blocks, a.kv_heads, a.block_size, a.head_dim}, rng);
  Tensor v = random_bf16(be, {total_blocks, a.kv_heads, a.block_size, a.head_dim}, rng);
  Tensor qkv = random_bf16(be, {T, shape.qkv_width()}, rng);
  Tensor out = be.empty({T, static_cast<int64_t>(a.heads) * a.head_dim}, DType::kBF16);
  AttentionMetadata meta;
  meta.num_seqs = S;
  meta.max_query_len = max_q;
  meta.min_query_len = min_q;  // as the engine sets it (a prompt-only step: no split kernels)
  meta.max_seq_len = max_len;
  meta.query_start_loc = device_i32(be, qsl, {S + 1});
  meta.seq_lens = device_i32(be, seq_lens, {S});
  meta.block_tables = device_i32(be, tables, {S, max_blocks});
  const float scale = 1.0f / std::sqrt(static_cast<float>(a.head_dim));
  if (profile_launches > 0) {
    for (int i = 0; i < profile_launches; ++i)
      be.paged_attention(out, qkv, k, v, meta, shape, scale, 0);
    be.synchronize();
    return 0.0;
  }
  return time_ms(be, [&] { be.paged_attention(out, qkv, k, v, meta, shape, scale, 0); });
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string f = argv[i];
    const int v = std::atoi(argv[i + 1]);
    if (f == "--heads") a.heads = v;
    else if (f == "--kv-heads") a.kv_heads = v;
    else if (f == "--head-dim") a.head_dim = v;
    else if (f == "--block-size") a.block_size = v;
    else if (f == "--attention-only") a.attention_only = v;
    else if (f == "--prefill-tokens") a.prefill_tokens = v;
    else if (f == "--sampling-only") a.sampling_only = v;
    else if (f == "--prefill-only") a.prefill_only = v;
    else {
      std::fprintf(stderr, "unknown flag %s\n", f.c_str());
      return 2;
    }
  }
  if (cuda::device_count() == 0) {
    std::fprintf(stderr, "no CUDA device\n");
    return 1;
  }
  CudaBackend be(0, DType::kBF16);
  std::mt19937 rng(0);
  if (a.prefill_tokens > 0) {
    time_attention(be, a, {a.prefill_tokens}, {a.prefill_tokens}, rng, 3);
    std::printf("{\"prefill_tokens\": %d, \"launches\": 3}\n", a.prefill_tokens);
    return 0;
  }
  std::printf("{\"gpu\": \"%s\", \"heads\": %d, \"kv_heads\": %d, \"head_dim\": %d, \"block_size\": %d", cuda::gpu_name(0).c_str(),
              a.heads, a.kv_heads, a.head_dim, a.block_size);

  // Copy ceiling: 1 GiB read + 1 GiB written.
  const int64_t copy_bytes = int64_t{1} << 30;
  Tensor src = random_bf16(be, {copy_bytes / 2}, rng);
  Tensor dst = be.empty({copy_bytes / 2}, DType::kBF16);
  const double copy_ms = time_ms(be, [&] {
    LLMCORE_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), copy_bytes, cudaMemcpyDeviceToDevice, be.stream()));
  }, 5, 7, 2);
  const double copy_gbs = 2.0 * copy_bytes / (copy_ms * 1e-3) / 1e9;
  std::printf(", \"copy\": {\"bytes\": %lld, \"ms\": %.4f, \"GB/s\": %.1f}", static_cast<long long>(copy_bytes), copy_ms, copy_gbs);
  src = Tensor();
  dst = Tensor();
  if (a.sampling_only) {
    std::printf(", \"sampling\": [");
    time_sampling(be, copy_gbs, rng, true);
    std::printf("]}\n");
    return 0;
  }

  // Decode attention: batch 64 (and 1, 256), contexts 256 .. 8192.
  std::printf(", \"decode_attention\": [");
  bool first = true;
  for (int batch : {1, 64, 256}) {
    if (a.prefill_only) break;
    for (int ctx : {256, 1024, 4096, 8192}) {
      if (static_cast<int64_t>(batch) * ctx > int64_t{256} * 4096) continue;
      std::vector<int> lens(batch, ctx), q(batch, 1);
      const double ms = time_attention(be, a, lens, q, rng);
      const double kv_bytes = 2.0 * batch * ctx * a.kv_heads * a.head_dim * 2;
      const double qo_bytes = 2.0 * batch * a.heads * a.head_dim * 2 + batch * 2.0 * a.kv_heads * a.head_dim * 2;
      const double gbs = (kv_bytes + qo_bytes) / (ms * 1e-3) / 1e9;
      std::printf("%s{\"batch\": %d, \"context\": %d, \"ms\": %.4f, \"GB/s\": %.1f, \"pct_of_copy\": %.1f}", first ? "" : ", ",
                  batch, ctx, ms, gbs, 100.0 * gbs / copy_gbs);
      first = false;
      std::fflush(stdout);
    }
  }
  std::printf("]");

  // Prefill attention: one causal prompt.
  std::printf(", \"prefill_attention\": [");
  first = true;
  for (int t : {512, 1024, 2048, 4096, 8192}) {
    const double ms = time_attention(be, a, {t}, {t}, rng);
    const double flops = 2.0 * t * static_cast<double>(t) * a.head_dim * a.heads;  // causal half of 4 T^2 D Hq
    std::printf("%s{\"tokens\": %d, \"ms\": %.4f, \"TFLOP/s\": %.1f}", first ? "" : ", ", t, ms, flops / (ms * 1e-3) / 1e12);
    first = false;
    std::fflush(stdout);
  }
  std::printf("]");
  if (a.attention_only || a.prefill_only) {
    std::printf("}\n");
    return 0;
  }

  // Linear layers of Llama-3-8B (fused qkv, o, fused gate_up, down, lm_head).
  struct Shape2 {
    const char* name;
    int64_t n, k;
  };
  const Shape2 shapes[] = {{"qkv", 6144, 4096}, {"o", 4096, 4096}, {"gate_up", 28672, 4096},
                           {"down", 4096, 14336}, {"lm_head", 128256, 4096}};
  std::printf(", \"linear\": [");
  first = true;
  for (const Shape2& s : shapes) {
    Tensor w = random_bf16(be, {s.n, s.k}, rng);
    for (int64_t m : {1, 16, 64, 256, 1024, 2048, 4096, 8192}) {
      if (std::string(s.name) == "lm_head" && m > 256) continue;  // logits of sampled rows only
      Tensor x = random_bf16(be, {m, s.k}, rng);
      const DType out_dtype = std::string(s.name) == "lm_head" ? DType::kF32 : DType::kBF16;
      Tensor out = be.empty({m, s.n}, out_dtype);
      const double ms = time_ms(be, [&] { be.linear(out, x, w, nullptr); });
      // The same rows as prompt rows and as generated rows (the decode GEMM off): the plans of
      // those roles (backend/cuda/cuda_linear.cpp, GemmRole), which the engine uses.
      const RowKinds as_prompt, as_generated = RowKinds::all_generated(m);
      const double prompt_ms = time_ms(be, [&] { be.linear(out, x, w, nullptr, &as_prompt); });
      be.set_decode_gemm(false);
      const double generated_ms = time_ms(be, [&] { be.linear(out, x, w, nullptr, &as_generated); });
      be.set_decode_gemm(true);
      const double flops = 2.0 * m * s.n * s.k;
      const double bytes = 2.0 * (s.n * s.k + m * s.k) + static_cast<double>(dtype_size(out_dtype)) * m * s.n;
      std::printf("%s{\"name\": \"%s\", \"m\": %lld, \"n\": %lld, \"k\": %lld, \"ms\": %.4f, \"TFLOP/s\": %.1f, \"GB/s\": %.1f, "
                  "\"prompt_ms\": %.4f, \"generated_ms\": %.4f}",
                  first ? "" : ", ", s.name, static_cast<long long>(m), static_cast<long long>(s.n),
                  static_cast<long long>(s.k), ms, flops / (ms * 1e-3) / 1e12, bytes / (ms * 1e-3) / 1e9, prompt_ms,
                  generated_ms);
      first = false;
      std::fflush(stdout);
    }
  }
  std::printf("]");

  // The decode GEMM (kernels/linear/skinny_gemm.cu) against the cuBLASLt linear on the same
  // shapes and M, every tiling. The weights are cycled through enough copies (>= 256 MiB) that
  // no launch finds its weight in L2, as in a decode step, whose layers all have their own.
  std::printf(", \"skinny\": [");
  first = true;
  for (const Shape2& s : shapes) {
    const DType out_dtype = std::string(s.name) == "lm_head" ? DType::kF32 : DType::kBF16;
    const double w_bytes = 2.0 * s.n * s.k;
    const int copies = static_cast<int>(std::max(1.0, std::ceil(256.0 * (1 << 20) / w_bytes)));
    std::vector<Tensor> ws;
    ws.push_back(random_bf16(be, {s.n, s.k}, rng));
    for (int c = 1; c < copies; ++c) {
      ws.push_back(be.empty({s.n, s.k}, DType::kBF16));
      LLMCORE_CUDA_CHECK(cudaMemcpyAsync(ws.back().data(), ws[0].data(), ws[0].nbytes(), cudaMemcpyDeviceToDevice,
                                         be.stream()));
    }
    for (int64_t m : {1, 2, 4, 8, 16, 32, 64, 128, 256}) {
      Tensor x = random_bf16(be, {m, s.k}, rng);
      Tensor out = be.empty({m, s.n}, out_dtype);
      const double bytes = w_bytes + 2.0 * m * s.k + static_cast<double>(dtype_size(out_dtype)) * m * s.n;
      int next = 0;
      const double cublas_ms = time_ms(be, [&] {
        be.linear(out, x, ws[next], nullptr);
        next = (next + 1) % copies;
      });
      std::printf("%s{\"name\": \"%s\", \"m\": %lld, \"n\": %lld, \"k\": %lld, \"bytes\": %.0f, \"cublas_ms\": %.4f, \"tilings\": [",
                  first ? "" : ", ", s.name, static_cast<long long>(m), static_cast<long long>(s.n),
                  static_cast<long long>(s.k), bytes, cublas_ms);
      first = false;
      bool first_t = true;
      for (const kernels::SkinnyGemmTiling& t : kernels::skinny_gemm_tilings()) {
        const double ms = time_ms(be, [&] {
          kernels::skinny_gemm(out, x, ws[next], nullptr, be.stream(), t);
          next = (next + 1) % copies;
        });
        const kernels::SkinnyGemmTiling d = kernels::skinny_gemm_default_tiling(m);
        std::printf("%s{\"cols\": %d, \"rows\": %d, \"default\": %s, \"ms\": %.4f}", first_t ? "" : ", ",
                    t.col_tiles, t.row_tiles, d.col_tiles == t.col_tiles && d.row_tiles == t.row_tiles ? "true" : "false", ms);
        first_t = false;
      }
      std::printf("]");
      if (std::string(s.name) == "gate_up") {
        // SwiGLU fused into the decode GEMM against the decode GEMM then silu_and_mul.
        Tensor act = be.empty({m, s.n / 2}, DType::kBF16);
        const double gated_ms = time_ms(be, [&] {
          kernels::skinny_gemm_silu_and_mul(act, x, ws[next], nullptr, be.stream());
          next = (next + 1) % copies;
        });
        const double unfused_ms = time_ms(be, [&] {
          kernels::skinny_gemm(out, x, ws[next], nullptr, be.stream());
          kernels::silu_and_mul(act, out, be.stream());
          next = (next + 1) % copies;
        });
        std::printf(", \"gated_ms\": %.4f, \"unfused_ms\": %.4f", gated_ms, unfused_ms);
      }
      std::printf("}");
      std::fflush(stdout);
    }
  }
  std::printf("]");
  std::printf(", \"sampling\": [");
  time_sampling(be, copy_gbs, rng, true);
  std::printf("]}\n");
  return 0;
}
