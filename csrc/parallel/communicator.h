// Communicator: the collectives tensor parallelism needs, one object per rank. The model calls
// them inside its forward pass (on the rank's backend stream, so CUDA graphs capture them); the
// executor's worker threads each own one rank's communicator and never touch another's.
//
// Implementations: ThreadCommunicator (this directory) joins CPU-backend ranks that are threads of
// one process through shared memory; NcclCommunicator (backend/cuda) joins GPUs through NCCL.
// Across hosts a communicator would be made from an exchanged NCCL unique id (README.md); nothing
// above this interface changes.
//
// Failure: a rank that throws calls abort(). Every rank's later collectives and synchronize()
// then throw GroupAborted instead of waiting for the failed rank; a rank whose already-enqueued
// collectives wait for it cuts them short in synchronize(), so no thread hangs in a collective.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace llmcore::parallel {

// Thrown by a rank whose collective was cut short because another rank failed.
class GroupAborted : public Error {
 public:
  explicit GroupAborted(const std::string& message) : Error(ErrorKind::kRuntime, message) {}
};

// State every rank of one group shares: whether (and why) the group was aborted.
class GroupState {
 public:
  bool aborted() const { return aborted_.load(std::memory_order_acquire); }
  // The first reason wins; later calls keep it.
  void abort(const std::string& reason);
  std::string reason() const;
  // Throws GroupAborted naming the reason when the group was aborted.
  void check(int rank) const;

 private:
  std::atomic<bool> aborted_{false};
  mutable std::mutex mu_;
  std::string reason_;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;

  // In place: x = the sum over ranks of x. Every rank passes a tensor of the same shape and dtype.
  virtual void all_reduce_sum(Tensor& x) = 0;
  // all_reduce_sum(x), then residual += x; x = rms_norm(residual) * weight (Backend::add_rms_norm,
  // the step after every row-parallel layer), fused into one pass with the same bits where this
  // communicator can: returns true when done, false when it did nothing (the caller then runs the
  // two). Every rank gets the same answer for the same shapes.
  virtual bool all_reduce_add_rms_norm(Tensor& x, Tensor& residual, const Tensor& weight, float eps) {
    (void)x, (void)residual, (void)weight, (void)eps;
    return false;
  }
  // out [L, N] gets rank r's in [L, n] in columns [r n, min((r + 1) n, N)): the vocab-parallel
  // logits put side by side (the last rank's padding columns past N are dropped).
  // n * world_size >= N > n * (world_size - 1).
  virtual void all_gather_columns(Tensor& out, const Tensor& in) = 0;
  // Waits until this rank's queued work (its collectives included) has finished; throws
  // GroupAborted when the group was aborted (first cutting this rank's collectives short if they
  // still wait for a failed peer), or aborts the group when the work takes longer than the step
  // timeout (a hung rank).
  virtual void synchronize() = 0;
  // Marks the group failed with `reason`. Call it from the thread that drives this rank.
  virtual void abort(const std::string& reason) = 0;

  GroupState& group() { return *group_; }

 protected:
  explicit Communicator(std::shared_ptr<GroupState> group) : group_(std::move(group)) {}
  std::shared_ptr<GroupState> group_;
};

// `world` communicators for ranks that are threads of this process with CPU (host-memory)
// tensors: float32 sums taken in rank order, so every rank gets the same bits.
std::vector<std::unique_ptr<Communicator>> create_thread_communicators(int world);

// Output columns rank r of `world` holds when N columns are split in parts of n = ceil(N / world):
// [begin, end) (the last part may be shorter).
inline std::pair<int64_t, int64_t> column_part(int64_t N, int world, int r) {
  const int64_t n = (N + world - 1) / world;
  const int64_t begin = std::min(N, n * r);
  return {begin, std::min(N, begin + n)};
}

}  // namespace llmcore::parallel
