#include "parallel/communicator.h"

namespace llmcore::parallel {

void GroupState::abort(const std::string& reason) {
  std::lock_guard<std::mutex> lk(mu_);
  if (!aborted_.load(std::memory_order_relaxed)) reason_ = reason;
  aborted_.store(true, std::memory_order_release);
}

std::string GroupState::reason() const {
  std::lock_guard<std::mutex> lk(mu_);
  return reason_;
}

void GroupState::check(int rank) const {
  if (aborted()) {
    throw GroupAborted(str_cat("tensor-parallel rank ", rank, " stopped because the group was aborted: ", reason()));
  }
}

}  // namespace llmcore::parallel
