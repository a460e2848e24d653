#include "sampling/logprobs.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "core/error.h"

namespace llmcore {
namespace {

std::string row_name(int row) { return row >= 0 ? str_cat("logits row ", row) : "logits row"; }

}  // namespace

double log_sum_exp(const float* logits, int vocab_size, int row) {
  LLMCORE_CHECK(vocab_size > 0, "vocab_size ", vocab_size);
  double max_logit = -INFINITY;
  for (int i = 0; i < vocab_size; ++i) {
    const float x = logits[i];
    if (std::isnan(x)) throw_runtime_error("model produced NaN: ", row_name(row), " token ", i);
    if (x == INFINITY) throw_runtime_error("model produced +inf: ", row_name(row), " token ", i);
    max_logit = std::max(max_logit, static_cast<double>(x));
  }
  if (max_logit == -INFINITY) {
    throw_runtime_error("model produced no finite logit: ", row_name(row), " is all -inf");
  }
  double sum = 0.0;
  for (int i = 0; i < vocab_size; ++i) sum += std::exp(static_cast<double>(logits[i]) - max_logit);
  return max_logit + std::log(sum);
}

TokenLogprob token_logprob(const float* logits, int vocab_size, double lse, int32_t token_id) {
  LLMCORE_CHECK(token_id >= 0 && token_id < vocab_size, "token id ", token_id, " outside [0, ",
                vocab_size, ")");
  const float x = logits[token_id];
  int num_higher = 0;
  for (int i = 0; i < vocab_size; ++i) num_higher += logits[i] > x;
  TokenLogprob out;
  out.token_id = token_id;
  out.logprob = static_cast<float>(static_cast<double>(x) - lse);
  out.rank = 1 + num_higher;
  return out;
}

void top_logprobs(const float* logits, int vocab_size, double lse, int k,
                  std::vector<int32_t>* order, std::vector<TokenLogprob>* top) {
  LLMCORE_CHECK(k >= 0, "k ", k);
  top->clear();
  if (k == 0) return;
  k = std::min(k, vocab_size);
  order->resize(vocab_size);
  std::iota(order->begin(), order->end(), 0);
  std::partial_sort(order->begin(), order->begin() + k, order->end(), [logits](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  top->reserve(k);
  for (int j = 0; j < k; ++j) {
    const int32_t id = (*order)[j];
    // Equal logits share a rank, as in token_logprob: 1 + count of strictly higher.
    const int rank = (j > 0 && logits[id] == logits[(*order)[j - 1]]) ? top->back().rank : j + 1;
    top->push_back({id, static_cast<float>(static_cast<double>(logits[id]) - lse), rank});
  }
}

}  // namespace llmcore
