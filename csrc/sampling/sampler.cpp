// sample(): per row, raw logprobs -> logits processors -> greedy argmax, or temperature, min-p,
// top-k, top-p and one draw from the row's generator (vLLM v1 semantics).
#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>

#include "core/error.h"
#include "sampling/logit_edits.h"
#include "sampling/logprobs.h"

namespace llmcore {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
// Tokens a crossing search looks at first, and below which it just sorts.
constexpr int kFirstSortedChunk = 64;

// Reused by every row a thread samples, so a step allocates nothing after the first.
struct RowScratch {
  std::vector<double> logits;   // [vocab_size] processed logits
  std::vector<uint64_t> mass;   // [vocab_size] weight_mass of the probability after min-p
  std::vector<int32_t> order;   // candidate token ids
  std::vector<LogitEdit> edits;
  EditScratch edit_scratch;
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
  uint64_t mass;
};

// The first position where the running mass exceeds `target`.
Crossing find_crossing(int32_t* ids, int n, const uint64_t* weights, ByLogitDesc cmp,
                       uint64_t target) {
  auto passes = [&](uint64_t mass) { return mass > target; };
  int lo = 0;
  int hi = n;
  uint64_t base = 0;  // weight of ids[0, lo), all ahead of ids[lo, hi) in sampling order
  int probe = kFirstSortedChunk;
  while (hi - lo > kFirstSortedChunk) {
    const int mid = lo + std::min(probe, (hi - lo) / 2);
    std::nth_element(ids + lo, ids + mid, ids + hi, cmp);
    uint64_t mass = 0;
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
  uint64_t mass = base;
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
  const double u = draw_uniform(bits);
  uint64_t* mass = scratch->mass.data();

  // w = exp(x - max x) with x = logits / temperature: the top token weighs exactly 1, so min-p's
  // "prob < min_p * max prob" is "w < min_p". An overflowed +inf logit (huge logit over a tiny
  // temperature) takes all the mass, shared with any other +inf.
  double max_x = -kInf;
  for (int i = 0; i < vocab_size; ++i) max_x = std::max(max_x, logits[i] / params.temperature);
  std::vector<int32_t>& order = scratch->order;
  order.resize(vocab_size);
  int num_candidates = 0;
  for (int i = 0; i < vocab_size; ++i) {
    const double x = logits[i] / params.temperature;
    double w = max_x == kInf ? (x == kInf ? 1.0 : 0.0) : std::exp(x - max_x);
    if (w < params.min_p) w = 0.0;
    mass[i] = weight_mass(w);
    if (w > 0.0) order[num_candidates++] = i;
  }
  LLMCORE_CHECK(num_candidates > 0, "no candidate token");

  const ByLogitDesc cmp{logits};
  int num_kept = num_candidates;
  if (params.top_k >= 1 && params.top_k < num_candidates) {
    num_kept = params.top_k;
    std::nth_element(order.begin(), order.begin() + num_kept, order.begin() + num_candidates, cmp);
  }
  uint64_t total = 0;
  for (int j = 0; j < num_kept; ++j) total += mass[order[j]];

  if (params.top_p < 1.0) {
    // Smallest prefix (in sampling order) whose mass reaches top_p of the total (mass >= t is
    // mass > ceil(t) - 1 for integer masses); the first token always stays.
    const double t = std::ceil(params.top_p * static_cast<double>(total));
    const uint64_t target = t >= 1.0 ? static_cast<uint64_t>(t) - 1 : 0;
    const Crossing cut = find_crossing(order.data(), num_kept, mass, cmp, target);
    num_kept = cut.index + 1;
    total = cut.mass;
  }
  // mass > u * total is mass > floor(u * total) for integer masses.
  uint64_t target = static_cast<uint64_t>(std::floor(u * static_cast<double>(total)));
  if (total > 0 && target >= total) target = total - 1;
  const Crossing pick = find_crossing(order.data(), num_kept, mass, cmp, target);
  return order[pick.index];
}

// Raw logprob and rank of `token_id`, and the top-k raw logprobs (k < 0: none), of one row;
// errors name the row (row < 0: unnamed).
void score(const float* logits, int vocab_size, int row, int32_t token_id, int k, TokenLogprob* chosen,
           std::vector<TokenLogprob>* top) {
  const double lse = log_sum_exp(logits, vocab_size, row);
  if (chosen != nullptr) *chosen = token_logprob(logits, vocab_size, lse, token_id);
  if (top != nullptr && k >= 0) top_logprobs(logits, vocab_size, lse, k, &thread_scratch().order, top);
}

}  // namespace

// One row: raw logprobs, processed logits, then greedy or one generator draw.
static void sample_row(const SampleRequest& row, int r, int vocab_size, SampleResult* result) {
  RowScratch& scratch = thread_scratch();
  LLMCORE_CHECK(row.logits != nullptr, "row ", r);
  LLMCORE_CHECK(row.num_logprobs >= -1, "row ", r, " num_logprobs ", row.num_logprobs);
  if (row.forced_token >= 0) {  // scoring a given token: raw logprobs only
    result->token_id = row.forced_token;
    score(row.logits, vocab_size, r, row.forced_token, row.num_logprobs, &result->chosen, &result->top);
    return;
  }
  const double lse = log_sum_exp(row.logits, vocab_size, r);
  LLMCORE_CHECK(row.params != nullptr, "row ", r);
  const SamplingParams& params = *row.params;
  scratch.logits.resize(vocab_size);
  scratch.mass.resize(vocab_size);

  double* logits = scratch.logits.data();  // [vocab_size] processed
  std::copy(row.logits, row.logits + vocab_size, logits);
  scratch.edits.clear();
  collect_logit_edits(row, vocab_size, &scratch.edit_scratch, &scratch.edits);
  const PenaltyFactors factors = penalty_factors(row);
  for (const LogitEdit& e : scratch.edits) {
    logits[e.token_id] = apply_logit_edit(static_cast<double>(row.logits[e.token_id]), e, factors);
  }

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
  LLMCORE_CHECK(top == nullptr || k >= 0, "k ", k);
  score(logits, vocab_size, -1, token_id, k, chosen, top);
}

}  // namespace llmcore
