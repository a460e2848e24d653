// The CUDA sampler: the reference sampler's contract (csrc/sampling/sampler.h) on logits that stay
// on the GPU, so only sampled ids and requested logprobs cross to the host.
//
// One block of kThreads threads per row. A row is read in full passes (thread t takes elements
// t, t + kThreads, ...), each ending in a block reduction with a fixed tree, so a row's result
// never depends on the batch. Steps:
//   1. raw pass: max of the raw logits, first NaN / +inf, and the processed argmax;
//      log-sum-exp (a second pass): expf of the float x - max (relative error ~1e-7 per term),
//      summed in double in a fixed order. exp in double made this pass the kernel's largest
//      cost at the 128k-entry vocabularies of Llama-3 (one block per row; FP64 throughput);
//   2. greedy: the argmax; forced: the given token; random: the draw below;
//   3. the chosen token's raw logprob and rank (count of strictly higher raw logits);
//   4. top-n raw logprobs: the n-th element by a count-weighted selection, then the n elements
//      before it, sorted.
// The draw works in sampling order (processed logit descending, lower id first) without sorting:
// "the first element at which the running weight exceeds a target" is found by a radix selection
// over the 32-bit order key of the processed logit, 4 bits per pass (per-thread 16-bucket
// histograms in dynamic shared memory, no atomics), then a block scan over the tied elements in
// id order. Weights are integers (floor(w * 2^40)), so sums are exact and every pass agrees with
// every other.
#include <atomic>
#include <cfloat>
#include <cmath>

#include "kernels/common/cuda_check.h"
#include "kernels/common/dynamic_smem.h"
#include "kernels/kernels.h"

namespace llmcore::kernels {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kBuckets = 16;  // 4-bit digits
constexpr float kMassScaleF = 1099511627776.0f;  // 2^40, as kMassScale in sampler.h
// Dynamic shared memory: every thread's histogram, bucket-major ([kBuckets][kThreads]), so a
// warp's read-modify-write of its lanes' buckets touches consecutive words whatever the digits.
constexpr size_t kHistBytes = sizeof(uint64_t) * kBuckets * kThreads;

// Sortable key of a float: larger float, larger key (-0 and +0 equal, as they compare).
__device__ __forceinline__ uint32_t order_key(float x) {
  if (x == 0.0f) x = 0.0f;
  const uint32_t u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// A position in sampling order: element (key, id) is at or before it iff key > b.key, or
// key == b.key and id <= b.id.
struct Boundary {
  uint32_t key;
  int32_t id;
};
constexpr Boundary kEverything = {0u, 0x7fffffff};

__device__ __forceinline__ bool at_or_before(uint32_t key, int id, Boundary b) {
  return key > b.key || (key == b.key && id <= b.id);
}

struct Shared {
  double d[kWarps];
  uint64_t u[kWarps];
  uint64_t hist[kWarps][kBuckets];
  uint64_t bucket[kBuckets];
  int32_t found_id;
  uint64_t found_mass;
  int32_t num_top;
  int32_t top_ids[kMaxSampleTopLogprobs];
};

// --- block reductions (every thread gets the result; the order is fixed) --------------------------

__device__ __forceinline__ uint64_t warp_max_u64(uint64_t v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const uint64_t other = __shfl_xor_sync(0xffffffffu, v, o);
    v = other > v ? other : v;
  }
  return v;
}
__device__ __forceinline__ uint64_t warp_sum_u64(uint64_t v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double warp_sum_f64(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ uint64_t block_max_u64(uint64_t v, Shared& sm) {
  v = warp_max_u64(v);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) sm.u[threadIdx.x >> 5] = v;
  __syncthreads();
  uint64_t r = sm.u[0];
  for (int w = 1; w < kWarps; ++w) r = sm.u[w] > r ? sm.u[w] : r;
  return r;
}
__device__ uint64_t block_sum_u64(uint64_t v, Shared& sm) {
  v = warp_sum_u64(v);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) sm.u[threadIdx.x >> 5] = v;
  __syncthreads();
  uint64_t r = 0;
  for (int w = 0; w < kWarps; ++w) r += sm.u[w];
  return r;
}
// Lane 0's butterfly order, then warps in order: fixed for a given kThreads.
__device__ double block_sum_f64(double v, Shared& sm) {
  v = warp_sum_f64(v);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) sm.d[threadIdx.x >> 5] = v;
  __syncthreads();
  double r = 0.0;
  for (int w = 0; w < kWarps; ++w) r += sm.d[w];
  return r;
}
// Exclusive prefix sum over threads in thread order.
__device__ uint64_t block_exclusive_scan_u64(uint64_t v, Shared& sm) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint64_t incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint64_t up = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += up;
  }
  __syncthreads();
  if (lane == 31) sm.u[warp] = incl;
  __syncthreads();
  uint64_t before = 0;
  for (int w = 0; w < warp; ++w) before += sm.u[w];
  return before + incl - v;
}

// --- the row ------------------------------------------------------------------------------------

struct Row {
  const float* raw;   // [V]
  const float* proc;  // [V] processed (raw when the row has no edits)
  int vocab;
};

// The views of an element the selections take: key(i), its order key (cheap), and weigh(i, key,
// &w), whether it is admitted and its integer weight (for a draw: a division and an exp). A
// selection pass looks at the key first and weighs only the elements in its key range; the call
// operator does both.
template <typename Self>
struct ElementView {
  __device__ __forceinline__ bool operator()(int i, uint32_t* key, uint64_t* w) const {
    const Self& self = static_cast<const Self&>(*this);
    *key = self.key(i);
    return self.weigh(i, *key, w);
  }
};

// The draw's view of an element: whether it is a candidate (w > 0 after min-p) and its integer
// weight.
struct DrawWeights : ElementView<DrawWeights> {
  const float* proc;
  float temperature;
  float max_y;   // max processed logit / temperature
  float min_p;
  __device__ DrawWeights(const float* p, float t, float m, float mp)
      : proc(p), temperature(t), max_y(m), min_p(mp) {}
  __device__ __forceinline__ uint32_t key(int i) const { return order_key(proc[i]); }
  __device__ __forceinline__ bool weigh(int i, uint32_t, uint64_t* mass) const {
    const float y = proc[i] / temperature;
    float w = isinf(max_y) && max_y > 0.0f ? (y == max_y ? 1.0f : 0.0f) : expf(y - max_y);
    if (w < min_p) w = 0.0f;
    *mass = __float2ull_rz(w * kMassScaleF);
    return w > 0.0f;
  }
};

// Elements `elem` admits, restricted to those at or before two boundaries, weighted by their mass
// (kMass) or by 1.
template <typename Elem, bool kMass>
struct Restricted : ElementView<Restricted<Elem, kMass>> {
  Elem elem;
  Boundary a, b;
  __device__ Restricted(const Elem& e, Boundary a_, Boundary b_) : elem(e), a(a_), b(b_) {}
  __device__ __forceinline__ uint32_t key(int i) const { return elem.key(i); }
  __device__ __forceinline__ bool weigh(int i, uint32_t key, uint64_t* w) const {
    if (!at_or_before(key, i, a) || !at_or_before(key, i, b)) return false;
    uint64_t mass;
    if (!elem.weigh(i, key, &mass)) return false;
    *w = kMass ? mass : 1u;
    return true;
  }
};

// Every raw logit, weighted 1 (top-n logprobs).
struct RawCount : ElementView<RawCount> {
  const float* raw;
  __device__ explicit RawCount(const float* r) : raw(r) {}
  __device__ __forceinline__ uint32_t key(int i) const { return order_key(raw[i]); }
  __device__ __forceinline__ bool weigh(int, uint32_t, uint64_t* w) const {
    *w = 1u;
    return true;
  }
};

struct Selected {
  Boundary at;    // the element where the running weight first exceeds the target
  uint64_t mass;  // the running weight through it
};

// In sampling order over the elements `elem` admits, the first one at which the running weight
// exceeds `target`. The admitted weight must exceed `target`.
template <typename Elem>
__device__ Selected select_crossing(const Elem& elem, int vocab, uint64_t target, Shared& sm) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  extern __shared__ uint64_t hist_s[];  // [kBuckets][kThreads], this thread's column
  uint64_t* const my_hist = hist_s + threadIdx.x;
  uint32_t prefix = 0, mask = 0;
  uint64_t base = 0;  // weight of admitted elements whose key is above the prefix's range
  for (int shift = 28; shift >= 0; shift -= 4) {
#pragma unroll
    for (int d = 0; d < kBuckets; ++d) my_hist[d * kThreads] = 0;
    // One shared-memory add per element (a register histogram indexed by the digit would take
    // a compare and a select per bucket: 16 per element).
    for (int i = threadIdx.x; i < vocab; i += kThreads) {
      const uint32_t key = elem.key(i);
      uint64_t w;
      if ((key & mask) != prefix || !elem.weigh(i, key, &w)) continue;
      my_hist[((key >> shift) & (kBuckets - 1)) * kThreads] += w;
    }
    uint64_t h[kBuckets];
#pragma unroll
    for (int d = 0; d < kBuckets; ++d) h[d] = warp_sum_u64(my_hist[d * kThreads]);
    __syncthreads();
    if (lane == 0) {
#pragma unroll
      for (int d = 0; d < kBuckets; ++d) sm.hist[warp][d] = h[d];
    }
    __syncthreads();
    if (threadIdx.x < kBuckets) {
      uint64_t s = 0;
      for (int w = 0; w < kWarps; ++w) s += sm.hist[w][threadIdx.x];
      sm.bucket[threadIdx.x] = s;
    }
    __syncthreads();
    int chosen = 0;
    for (int d = kBuckets - 1; d >= 0; --d) {
      if (base + sm.bucket[d] > target) {
        chosen = d;
        break;
      }
      base += sm.bucket[d];
    }
    prefix |= static_cast<uint32_t>(chosen) << shift;
    mask |= static_cast<uint32_t>(kBuckets - 1) << shift;
  }
  // Elements with key == prefix, in id order: each thread scans a contiguous range of ids.
  const int chunk = (vocab + kThreads - 1) / kThreads;
  const int lo = min(vocab, static_cast<int>(threadIdx.x) * chunk);
  const int hi = min(vocab, lo + chunk);
  uint64_t mine = 0;
  for (int i = lo; i < hi; ++i) {
    const uint32_t key = elem.key(i);
    uint64_t w;
    if (key == prefix && elem.weigh(i, key, &w)) mine += w;
  }
  const uint64_t before = base + block_exclusive_scan_u64(mine, sm);
  if (threadIdx.x == 0) {
    sm.found_id = -1;
    sm.found_mass = 0;
  }
  __syncthreads();
  if (before <= target && before + mine > target) {
    uint64_t run = before;
    for (int i = lo; i < hi; ++i) {
      const uint32_t key = elem.key(i);
      uint64_t w;
      if (key == prefix && elem.weigh(i, key, &w)) {
        run += w;
        if (run > target) {
          sm.found_id = i;
          sm.found_mass = run;
          break;
        }
      }
    }
  }
  __syncthreads();
  return {{prefix, sm.found_id}, sm.found_mass};
}

__device__ int32_t draw(const Row& row, const GpuSampleRow& p, float max_proc, Shared& sm) {
  DrawWeights weights{row.proc, p.temperature, max_proc / p.temperature, p.min_p};
  Boundary top_k_cut = kEverything;
  if (p.top_k >= 1) {
    uint64_t num_candidates = 0;
    for (int i = threadIdx.x; i < row.vocab; i += kThreads) {
      uint32_t key;
      uint64_t w;
      num_candidates += weights(i, &key, &w) ? 1u : 0u;
    }
    num_candidates = block_sum_u64(num_candidates, sm);
    if (static_cast<uint64_t>(p.top_k) < num_candidates) {
      Restricted<DrawWeights, false> counted{weights, kEverything, kEverything};
      top_k_cut = select_crossing(counted, row.vocab, static_cast<uint64_t>(p.top_k) - 1, sm).at;
    }
  }
  Restricted<DrawWeights, true> kept{weights, top_k_cut, kEverything};
  uint64_t total = 0;
  for (int i = threadIdx.x; i < row.vocab; i += kThreads) {
    uint32_t key;
    uint64_t w;
    if (kept(i, &key, &w)) total += w;
  }
  total = block_sum_u64(total, sm);
  if (p.top_p < 1.0f) {
    const double t = ceil(static_cast<double>(p.top_p) * static_cast<double>(total));
    const uint64_t target = t >= 1.0 ? static_cast<uint64_t>(t) - 1 : 0u;
    const Selected cut = select_crossing(kept, row.vocab, target, sm);
    kept.b = cut.at;
    total = cut.mass;
  }
  uint64_t target = static_cast<uint64_t>(floor(p.u * static_cast<double>(total)));
  if (total > 0 && target >= total) target = total - 1;
  return select_crossing(kept, row.vocab, target, sm).at.id;
}

__global__ void __launch_bounds__(kThreads) SampleRowsKernel(const GpuSampleRow* rows,
                                                             GpuSampleResult* results, int vocab) {
  __shared__ Shared sm;
  const GpuSampleRow p = rows[blockIdx.x];
  GpuSampleResult* out = results + blockIdx.x;

  Row row{p.logits, p.logits, vocab};
  if (p.mode != kSampleForced && p.num_edits > 0) {
    for (int i = threadIdx.x; i < vocab; i += kThreads) p.processed[i] = p.logits[i];
    __syncthreads();
    for (int e = threadIdx.x; e < p.num_edits; e += kThreads) {
      const LogitEdit& edit = p.edits[e];
      p.processed[edit.token_id] = static_cast<float>(
          apply_logit_edit(static_cast<double>(p.logits[edit.token_id]), edit, p.penalties));
    }
    __syncthreads();
    row.proc = p.processed;
  }

  // 1. raw max, first bad raw logit, processed argmax (key, then lower id: ~id is larger).
  float raw_max = -INFINITY;
  int first_bad = 0x7fffffff;
  uint64_t best = 0;
  for (int i = threadIdx.x; i < vocab; i += kThreads) {
    const float x = row.raw[i];
    if (isnan(x) || (isinf(x) && x > 0.0f)) first_bad = min(first_bad, i);
    raw_max = fmaxf(raw_max, x);
    const uint64_t c = (static_cast<uint64_t>(order_key(row.proc[i])) << 32) |
                       static_cast<uint32_t>(~static_cast<uint32_t>(i));
    best = c > best ? c : best;
  }
  // Non-negative floats' bit patterns order as the floats do; -inf..max is mapped through the key.
  const uint32_t raw_max_key =
      static_cast<uint32_t>(block_max_u64(order_key(raw_max), sm));
  const int bad = static_cast<int>(
      0x7fffffff - static_cast<int64_t>(block_max_u64(0x7fffffffu - static_cast<uint32_t>(first_bad), sm)));
  best = block_max_u64(best, sm);
  const uint32_t best_key = static_cast<uint32_t>(best >> 32);
  const int best_id = static_cast<int>(~static_cast<uint32_t>(best & 0xffffffffu));
  const float raw_max_f =
      __uint_as_float((raw_max_key & 0x80000000u) ? (raw_max_key & 0x7fffffffu) : ~raw_max_key);
  const float max_proc =
      __uint_as_float((best_key & 0x80000000u) ? (best_key & 0x7fffffffu) : ~best_key);

  if (bad != 0x7fffffff || raw_max_f == -INFINITY) {
    if (threadIdx.x == 0) {
      out->error = bad != 0x7fffffff ? (isnan(row.raw[bad]) ? kSampleNaN : kSamplePosInf) : kSampleAllNegInf;
      out->error_index = bad != 0x7fffffff ? bad : -1;
      out->token_id = -1;
      out->num_top = 0;
    }
    return;
  }
  double sum = 0.0;
  for (int i = threadIdx.x; i < vocab; i += kThreads) {
    sum += static_cast<double>(expf(row.raw[i] - raw_max_f));
  }
  const double lse = static_cast<double>(raw_max_f) + log(block_sum_f64(sum, sm));

  // 2. the token.
  int32_t token = best_id;
  if (p.mode == kSampleForced) {
    token = p.forced_token;
  } else if (max_proc == -INFINITY) {
    if (threadIdx.x == 0) {
      out->error = kSampleNoCandidate;
      out->error_index = -1;
      out->token_id = -1;
      out->num_top = 0;
    }
    return;
  } else if (p.mode == kSampleRandom) {
    token = draw(row, p, max_proc, sm);
  }
  if (token < 0 || token >= vocab) {  // a selection found nothing: cannot happen with w_max = 1
    if (threadIdx.x == 0) {
      out->error = kSampleNoCandidate;
      out->error_index = token;
      out->token_id = -1;
      out->num_top = 0;
    }
    return;
  }

  // 3. its raw logprob and rank.
  const float chosen = row.raw[token];
  uint64_t higher = 0;
  for (int i = threadIdx.x; i < vocab; i += kThreads) higher += row.raw[i] > chosen ? 1u : 0u;
  higher = block_sum_u64(higher, sm);

  // 4. top-n raw logprobs.
  const int n = min(p.num_logprobs, vocab);
  if (n > 0) {
    RawCount all{row.raw};
    const Boundary nth = select_crossing(all, vocab, static_cast<uint64_t>(n) - 1, sm).at;
    if (threadIdx.x == 0) sm.num_top = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < vocab; i += kThreads) {
      if (at_or_before(order_key(row.raw[i]), i, nth)) {
        const int slot = atomicAdd(&sm.num_top, 1);
        if (slot < kMaxSampleTopLogprobs) sm.top_ids[slot] = i;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    out->error = kSampleOk;
    out->error_index = -1;
    out->token_id = token;
    out->logprob = static_cast<float>(static_cast<double>(chosen) - lse);
    out->rank = static_cast<int32_t>(1 + higher);
    const int m = n > 0 ? min(sm.num_top, kMaxSampleTopLogprobs) : 0;
    // Sort by (raw desc, id asc); ties share the rank of the first.
    for (int a = 1; a < m; ++a) {
      const int id = sm.top_ids[a];
      const uint32_t k = order_key(row.raw[id]);
      int b = a - 1;
      while (b >= 0) {
        const int other = sm.top_ids[b];
        const uint32_t ko = order_key(row.raw[other]);
        if (ko > k || (ko == k && other < id)) break;
        sm.top_ids[b + 1] = other;
        --b;
      }
      sm.top_ids[b + 1] = id;
    }
    out->num_top = m;
    for (int j = 0; j < m; ++j) {
      const int id = sm.top_ids[j];
      const float x = row.raw[id];
      out->top_ids[j] = id;
      out->top_logprobs[j] = static_cast<float>(static_cast<double>(x) - lse);
      out->top_ranks[j] = (j > 0 && x == row.raw[sm.top_ids[j - 1]]) ? out->top_ranks[j - 1] : j + 1;
    }
  }
}

}  // namespace

void sample_rows(const GpuSampleRow* rows, GpuSampleResult* results, int num_rows, int vocab_size,
                 cudaStream_t stream) {
  LLMCORE_CHECK(vocab_size > 0, "sample_rows: vocab_size ", vocab_size);
  if (num_rows == 0) return;
  static std::atomic<uint64_t> done_devices{0};
  allow_dynamic_smem(reinterpret_cast<const void*>(SampleRowsKernel), kHistBytes, done_devices);
  SampleRowsKernel<<<num_rows, kThreads, kHistBytes, stream>>>(rows, results, vocab_size);
  LLMCORE_CUDA_CHECK_LAUNCH();
}

}  // namespace llmcore::kernels
