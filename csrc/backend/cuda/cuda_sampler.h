// CudaSampler: the sampler contract of sampling/sampler.h for logits rows that live on this
// backend's GPU. The host collects each row's logit edits and draws its uniform from the row's
// generator (exactly as the reference sampler consumes it), one copy moves rows and edits to the
// GPU, kernels/sampling samples every row, and only the results come back.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "kernels/sampling/sample_rows.h"
#include "sampling/sampler.h"

namespace llmcore {

class CudaBackend;

class CudaSampler {
 public:
  explicit CudaSampler(CudaBackend& backend);
  ~CudaSampler();
  CudaSampler(const CudaSampler&) = delete;
  CudaSampler& operator=(const CudaSampler&) = delete;

  // rows[i].logits point at GPU rows of vocab_size float32 logits on this backend's device.
  // Same results, errors and generator use as llmcore::sample(), up to the float32 arithmetic
  // of the processed logits and weights. wait_for_step, when given, runs once the sampling is
  // enqueued and before the results are read, also when there are no rows: the caller waits
  // there for what else produced the logits (tensor-parallel ranks).
  std::vector<SampleResult> sample(const std::vector<SampleRequest>& rows, int vocab_size,
                                   const std::function<void()>& wait_for_step = nullptr);

 private:
  void reserve_host(size_t bytes);

  CudaBackend& backend_;
  uint8_t* host_ = nullptr;  // pinned staging: rows and edits going up, results coming back
  size_t host_bytes_ = 0;
  std::vector<kernels::GpuSampleRow> rows_;
  std::vector<LogitEdit> edits_;
  std::vector<int32_t> edit_begin_;
  EditScratch edit_scratch_;
};

}  // namespace llmcore
