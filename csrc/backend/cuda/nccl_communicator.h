// NcclCommunicator: parallel/communicator.h over NCCL, one communicator per GPU of this process
// (ncclCommInitAll). Collectives are enqueued on the rank's CudaBackend stream, so they order
// with its kernels and CUDA graphs capture them. All-reduces of up to 8 MiB use the one-shot
// peer-memory kernel (kernels/comm) when every GPU pair has peer access, unless
// LLMCORE_CUSTOM_ALL_REDUCE=0. Built when NCCL is found (LLMCORE_WITH_NCCL).
#pragma once

#ifdef LLMCORE_WITH_NCCL

#include <memory>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "parallel/communicator.h"

namespace llmcore {

// One communicator per backend, rank r on backends[r] (each on its own GPU). `step_timeout_s`:
// synchronize() gives up (aborting the group) when a rank's queued work runs longer than this.
std::vector<std::unique_ptr<parallel::Communicator>> create_nccl_communicators(
    const std::vector<CudaBackend*>& backends, double step_timeout_s);

}  // namespace llmcore

#endif  // LLMCORE_WITH_NCCL
