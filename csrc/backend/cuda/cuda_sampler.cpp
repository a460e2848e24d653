#include "backend/cuda/cuda_sampler.h"

#include <algorithm>
#include <cstring>

#include "backend/cuda/cuda_backend.h"
#include "core/error.h"
#include "kernels/common/cuda_check.h"
#include "kernels/kernels.h"

namespace llmcore {
namespace {

size_t align_up(size_t n) { return (n + 255) & ~size_t{255}; }

}  // namespace

CudaSampler::CudaSampler(CudaBackend& backend) : backend_(backend) {}

CudaSampler::~CudaSampler() {
  if (host_ != nullptr) cudaFreeHost(host_);
}

void CudaSampler::reserve_host(size_t bytes) {
  if (bytes <= host_bytes_) return;
  const size_t want = std::max(bytes, host_bytes_ * 2);
  if (host_ != nullptr) cudaFreeHost(host_);  // the last call synchronized: nothing reads it
  host_ = nullptr;
  host_bytes_ = 0;
  LLMCORE_CUDA_CHECK(cudaMallocHost(&host_, want));
  host_bytes_ = want;
}

std::vector<SampleResult> CudaSampler::sample(const std::vector<SampleRequest>& rows, int vocab_size,
                                              const std::function<void()>& wait_for_step) {
  using kernels::GpuSampleResult;
  using kernels::GpuSampleRow;
  LLMCORE_CHECK(vocab_size > 0, "vocab_size ", vocab_size);
  const size_t n = rows.size();
  std::vector<SampleResult> results(n);
  if (n == 0) {
    if (wait_for_step) wait_for_step();
    return results;
  }

  // Rows on the host; device pointers to edits and scratch are filled in once they are placed.
  rows_.assign(n, GpuSampleRow{});
  edits_.clear();
  edit_begin_.assign(n, 0);
  std::vector<int32_t> processed_index(n, -1);
  int num_processed = 0;
  for (size_t r = 0; r < n; ++r) {
    const SampleRequest& row = rows[r];
    GpuSampleRow& g = rows_[r];
    LLMCORE_CHECK(row.logits != nullptr, "row ", r);
    LLMCORE_CHECK(row.num_logprobs >= -1 && row.num_logprobs <= kernels::kMaxSampleTopLogprobs,
                  "row ", r, " num_logprobs ", row.num_logprobs);
    g.logits = row.logits;
    g.num_logprobs = row.num_logprobs;
    if (row.forced_token >= 0) {
      LLMCORE_CHECK(row.forced_token < vocab_size, "row ", r, " forced token ", row.forced_token);
      g.mode = kernels::kSampleForced;
      g.forced_token = row.forced_token;
      continue;
    }
    LLMCORE_CHECK(row.params != nullptr, "row ", r);
    const SamplingParams& params = *row.params;
    edit_begin_[r] = static_cast<int32_t>(edits_.size());
    collect_logit_edits(row, vocab_size, &edit_scratch_, &edits_);
    g.num_edits = static_cast<int32_t>(edits_.size()) - edit_begin_[r];
    if (g.num_edits > 0) processed_index[r] = num_processed++;
    g.penalties = penalty_factors(row);
    if (params.greedy()) {
      g.mode = kernels::kSampleGreedy;
    } else {
      LLMCORE_CHECK(row.rng != nullptr, "row ", r, " samples randomly but has no generator");
      g.mode = kernels::kSampleRandom;
      g.u = draw_uniform((*row.rng)());
      g.temperature = static_cast<float>(params.temperature);
      g.top_k = params.top_k;
      g.top_p = static_cast<float>(params.top_p);
      g.min_p = static_cast<float>(params.min_p);
    }
  }

  // One device buffer: [rows][edits][results][processed rows], each part 256-byte aligned.
  const size_t rows_bytes = align_up(n * sizeof(GpuSampleRow));
  const size_t edits_bytes = align_up(edits_.size() * sizeof(LogitEdit));
  const size_t results_bytes = align_up(n * sizeof(GpuSampleResult));
  const size_t processed_bytes = static_cast<size_t>(num_processed) * vocab_size * sizeof(float);
  const size_t total = rows_bytes + edits_bytes + results_bytes + processed_bytes;
  Tensor device = backend_.empty({static_cast<int64_t>(total)}, DType::kU8);
  uint8_t* d = device.data_as<uint8_t>();
  auto* d_rows = reinterpret_cast<GpuSampleRow*>(d);
  auto* d_edits = reinterpret_cast<LogitEdit*>(d + rows_bytes);
  auto* d_results = reinterpret_cast<GpuSampleResult*>(d + rows_bytes + edits_bytes);
  auto* d_processed = reinterpret_cast<float*>(d + rows_bytes + edits_bytes + results_bytes);
  for (size_t r = 0; r < n; ++r) {
    if (rows_[r].num_edits == 0) continue;
    rows_[r].edits = d_edits + edit_begin_[r];
    rows_[r].processed = d_processed + static_cast<size_t>(processed_index[r]) * vocab_size;
  }

  reserve_host(std::max(rows_bytes + edits_bytes, results_bytes));
  std::memcpy(host_, rows_.data(), n * sizeof(GpuSampleRow));
  if (!edits_.empty()) std::memcpy(host_ + rows_bytes, edits_.data(), edits_.size() * sizeof(LogitEdit));
  const cudaStream_t stream = backend_.stream();
  {
    cuda::DeviceGuard guard(backend_.device_index());
    LLMCORE_CUDA_CHECK(cudaMemcpyAsync(d, host_, rows_bytes + edits_bytes, cudaMemcpyHostToDevice, stream));
    kernels::sample_rows(d_rows, d_results, static_cast<int>(n), vocab_size, stream);
    // The staging buffer is reused for the results: stream order puts this copy after the upload.
    LLMCORE_CUDA_CHECK(cudaMemcpyAsync(host_, d_results, n * sizeof(GpuSampleResult),
                                       cudaMemcpyDeviceToHost, stream));
  }
  if (wait_for_step) wait_for_step();
  backend_.synchronize();

  const auto* out = reinterpret_cast<const GpuSampleResult*>(host_);
  for (size_t r = 0; r < n; ++r) {
    const GpuSampleResult& g = out[r];
    switch (g.error) {
      case kernels::kSampleOk:
        break;
      case kernels::kSampleNaN:
        throw_runtime_error("model produced NaN: logits row ", r, " token ", g.error_index);
      case kernels::kSamplePosInf:
        throw_runtime_error("model produced +inf: logits row ", r, " token ", g.error_index);
      case kernels::kSampleAllNegInf:
        throw_runtime_error("model produced no finite logit: logits row ", r, " is all -inf");
      default:
        throw_runtime_error("logits row ", r, ": every token is -inf after the logits processors ",
                            "(min_tokens masks the stop tokens); nothing can be sampled");
    }
    SampleResult& res = results[r];
    res.token_id = g.token_id;
    res.chosen = {g.token_id, g.logprob, g.rank};
    if (rows[r].num_logprobs >= 0) {
      res.top.reserve(g.num_top);
      for (int j = 0; j < g.num_top; ++j) res.top.push_back({g.top_ids[j], g.top_logprobs[j], g.top_ranks[j]});
    }
  }
  return results;
}

}  // namespace llmcore
