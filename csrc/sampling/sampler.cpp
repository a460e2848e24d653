// sample(): per row, raw logprobs -> logits processors -> greedy argmax, or temperature, min-p,
// top-k, top-p and one draw from the row's generator (vLLM v1 semantics).
#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>

#include "core/error.h"
#include "sampling/logits_processors.h"
#include "sampling/logprobs.h"

namespace llmcore {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
// Tokens a crossing search looks at first, and below which it just sorts.
constexpr int kFirstSortedChunk = 64;

// Reused by every row a thread samples, so a step allocates nothing after the first.
struct RowScratch {
  std::vector<double> logits;   // [vocab_size] processed logits
  std::vector<double> weights;  // [vocab_size] unnormalized probability after min-p; 0: filtered out
  std::vector<int32_t> order;   // candidate token ids
  PenaltyScratch penalties;
};

RowScratch& thread_scratch() {
  thread_local RowScratch scratch;
  return scratch;
}

// Sampling order: higher processed logit first, lower id on ties. A strict total order, so the
// sorted sequence (and any top-k set) is unique. Temperature and exp are monotone, so this is
// also descending probability, without the ties exp's rounding could add.
struct ByLogitDesc {
  const double* logits;
  bool operator()(int32_t a, int32_t b) const {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  }
};

// Where the cumulative weight of ids[0, n), taken in sampling order, first passes `target`
// (strictly when `strict`): the position and the cumulative weight through it. Reorders ids so
// that ids[0, index] are the first index + 1 tokens of the sampling order. A weighted quickselect:
// it probes the top kFirstSortedChunk tokens first (peaked distributions end there), then halves
// the range, O(n) in all, where sorting the whole vocabulary would be O(n log n). When rounding
// keeps the sum from reaching `target`, the answer is the last token.
struct Crossing {
  int index;
  double mass;
};

Crossing find_crossing(int32_t* ids, int n, const double* weights, ByLogitDesc cmp, double target,
                       bool strict) {
  auto passes = [&](double mass) { return strict ? mass > target : mass >= target; };
  int lo = 0;
  int hi = n;
  double base = 0.0;  // weight of ids[0, lo), all ahead of ids[lo, hi) in sampling order
  int probe = kFirstSortedChunk;
  while (hi - lo > kFirstSortedChunk) {
    const int mid = lo + std::min(probe, (hi - lo) / 2);
    std::nth_element(ids + lo, ids + mid, ids + hi, cmp);
    double mass = 0.0;
    for (int j = lo; j < mid; ++j) mass += weights[ids[j]];
    if (passes(base + mass)) {
      hi = mid;
    } else {
      base += mass;
      lo = mid;
    }
    probe = n;
  }
  std::sort(ids + lo, ids + hi, cmp);
  double mass = base;
  for (int j = lo; j < hi; ++j) {
    mass += weights[ids[j]];
    if (passes(mass)) return {j, mass};
  }
  return {hi - 1, mass};
}

// Lowest id among the highest processed logits.
int32_t argmax(const double* logits, int vocab_size) {
  int32_t best = 0;
  for (int32_t i = 1; i < vocab_size; ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return best;
}

// Random sampling from processed logits ([vocab_size]) given one generator output `bits`.
int32_t draw(const SamplingParams& params, const double* logits, int vocab_size, uint64_t bits,
             RowScratch* scratch) {
  const double u = static_cast<double>(bits >> 11) * 0x1.0p-53;  // [0, 1)
  double* weights = scratch->weights.data();

  // weights = exp(x - max x) with x = logits / temperature: the top token weighs exactly 1, so
  // min-p's "prob < min_p * max prob" is "weight < min_p". An overflowed +inf logit (huge logit
  // over a tiny temperature) takes all the mass, shared with any other +inf.
  double max_x = -kInf;
  for (int i = 0; i < vocab_size; ++i) {
    weights[i] = logits[i] / params.temperature;
    max_x = std::max(max_x, weights[i]);
  }
  std::vector<int32_t>& order = scratch->order;
  order.resize(vocab_size);
  int num_candidates = 0;
  for (int i = 0; i < vocab_size; ++i) {
    const double x = weights[i];
    double w = max_x == kInf ? (x == kInf ? 1.0 : 0.0) : std::exp(x - max_x);
    if (w < params.min_p) w = 0.0;
    weights[i] = w;
    if (w > 0.0) order[num_candidates++] = i;
  }
  LLMCORE_CHECK(num_candidates > 0, "no candidate token");

  const ByLogitDesc cmp{logits};
  int num_kept = num_candidates;
  if (params.top_k >= 1 && params.top_k < num_candidates) {
    num_kept = params.top_k;
    std::nth_element(order.begin(), order.begin() + num_kept, order.begin() + num_candidates, cmp);
  }
  double total = 0.0;
  for (int j = 0; j < num_kept; ++j) total += weights[order[j]];

  if (params.top_p < 1.0) {
    // Smallest prefix (in sampling order) whose mass reaches top_p; the first token always stays.
    const Crossing cut = find_crossing(order.data(), num_kept, weights, cmp, params.top_p * total,
                                       /*strict=*/false);
    num_kept = cut.index + 1;
    total = cut.mass;
  }
  const Crossing pick = find_crossing(order.data(), num_kept, weights, cmp, u * total,
                                      /*strict=*/true);
  return order[pick.index];
}

}  // namespace

// One row: raw logprobs, processed logits, then greedy or one generator draw.
static void sample_row(const SampleRequest& row, int r, int vocab_size, SampleResult* result) {
  RowScratch& scratch = thread_scratch();
  scratch.logits.resize(vocab_size);
  scratch.weights.resize(vocab_size);
  LLMCORE_CHECK(row.logits != nullptr && row.params != nullptr, "row ", r);
  LLMCORE_CHECK(row.num_logprobs >= -1, "row ", r, " num_logprobs ", row.num_logprobs);
  const SamplingParams& params = *row.params;

  const double lse = log_sum_exp(row.logits, vocab_size, r);

  double* logits = scratch.logits.data();  // [vocab_size] processed
  std::copy(row.logits, row.logits + vocab_size, logits);
  apply_logits_processors(row, vocab_size, &scratch.penalties, logits);

  const int32_t best = argmax(logits, vocab_size);
  if (logits[best] == -kInf) {
    throw_runtime_error("logits row ", r, ": every token is -inf after the logits processors ",
                        "(min_tokens masks the stop tokens); nothing can be sampled");
  }
  int32_t token = best;
  if (!params.greedy()) {
    LLMCORE_CHECK(row.rng != nullptr, "row ", r, " samples randomly but has no generator");
    token = draw(params, logits, vocab_size, (*row.rng)(), &scratch);
  }
  result->token_id = token;
  result->chosen = token_logprob(row.logits, vocab_size, lse, token);
  if (row.num_logprobs >= 0) {
    top_logprobs(row.logits, vocab_size, lse, row.num_logprobs, &scratch.order, &result->top);
  }
}

std::vector<SampleResult> sample(const std::vector<SampleRequest>& rows, int vocab_size) {
  LLMCORE_CHECK(vocab_size > 0, "vocab_size ", vocab_size);
  std::vector<SampleResult> results(rows.size());
  // Rows are independent (each has its own generator and scratch), so they run in parallel with
  // results identical to a serial loop. An exception is carried out of the parallel region.
  std::exception_ptr error;
  const int64_t num_rows = static_cast<int64_t>(rows.size());
#pragma omp parallel for schedule(dynamic, 1) if (num_rows > 1)
  for (int64_t r = 0; r < num_rows; ++r) {
    try {
      sample_row(rows[r], static_cast<int>(r), vocab_size, &results[r]);
    } catch (...) {
#pragma omp critical(llmcore_sample_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
  return results;
}

void raw_logprobs(const float* logits, int vocab_size, int32_t token_id, int k,
                  TokenLogprob* chosen, std::vector<TokenLogprob>* top) {
  LLMCORE_CHECK(logits != nullptr && vocab_size > 0, "vocab_size ", vocab_size);
  const double lse = log_sum_exp(logits, vocab_size, -1);
  if (chosen != nullptr) *chosen = token_logprob(logits, vocab_size, lse, token_id);
  if (top != nullptr) top_logprobs(logits, vocab_size, lse, k, &thread_scratch().order, top);
}

}  // namespace llmcore
