#include "parallel/worker_pool.h"

#include <chrono>

#include "core/error.h"
#include "parallel/communicator.h"

namespace llmcore::parallel {

namespace {

// Polls `ready` (with yields) for up to `limit`; returns whether it became true.
template <typename Pred>
bool spin_until(Pred ready, std::chrono::microseconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!ready()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::yield();
  }
  return true;
}

constexpr std::chrono::microseconds kSpin{5000};

}  // namespace

WorkerPool::WorkerPool(int num_workers, bool spin) : spin_(spin), errors_(static_cast<size_t>(num_workers)) {
  LLMCORE_CHECK(num_workers >= 1, "worker pool of ", num_workers);
  for (int r = 0; r < num_workers; ++r) threads_.emplace_back([this, r] { loop(r); });
}

WorkerPool::~WorkerPool() {
  if (wedged_) {  // the owner should have leaked us; never wait for a stuck thread
    for (std::thread& t : threads_) t.detach();
    return;
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void WorkerPool::loop(int rank) {
  int64_t seen = 0;
  while (true) {
    std::shared_ptr<const std::function<void(int)>> fn;
    std::shared_ptr<const std::function<void(int, const std::exception&)>> on_error;
    if (spin_) spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; }, kSpin);
    {
      std::unique_lock<std::mutex> lk(mu_);
      work_cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      fn = fn_;
      on_error = on_error_;
    }
    std::exception_ptr error;
    auto mark_failed = [&] {
      std::lock_guard<std::mutex> lk(mu_);
      run_failed_ = true;
      barrier_cv_.notify_all();
      done_cv_.notify_all();
    };
    try {
      (*fn)(rank);
    } catch (const std::exception& e) {
      error = std::current_exception();
      mark_failed();
      try {
        (*on_error)(rank, e);
      } catch (...) {
      }
    } catch (...) {
      error = std::current_exception();
      mark_failed();
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      errors_[static_cast<size_t>(rank)] = error;
      if (--pending_ == 0) done_cv_.notify_all();
    }
  }
}

void WorkerPool::barrier(int rank) {
  std::unique_lock<std::mutex> lk(mu_);
  auto failed = [&] {
    return GroupAborted(str_cat("tensor-parallel rank ", rank, " stopped before its collectives: another rank failed"));
  };
  if (run_failed_) throw failed();
  const int64_t gen = barrier_generation_;
  if (++barrier_arrived_ == size()) {
    barrier_arrived_ = 0;
    ++barrier_generation_;
    barrier_cv_.notify_all();
    return;
  }
  if (spin_) {
    lk.unlock();
    spin_until([&] { return barrier_generation_.load(std::memory_order_acquire) != gen || run_failed_.load(); },
               kSpin);
    lk.lock();
  }
  barrier_cv_.wait(lk, [&] { return barrier_generation_ != gen || run_failed_; });
  if (barrier_generation_ == gen) throw failed();
}

void WorkerPool::run(const std::function<void(int)>& fn,
                     const std::function<void(int, const std::exception&)>& on_error, double grace_s) {
  LLMCORE_CHECK(!wedged_, "the worker pool has ranks stuck in an earlier run");
  {
    std::unique_lock<std::mutex> lk(mu_);
    fn_ = std::make_shared<const std::function<void(int)>>(fn);
    on_error_ = std::make_shared<const std::function<void(int, const std::exception&)>>(on_error);
    pending_ = size();
    run_failed_ = false;
    barrier_arrived_ = 0;
    for (std::exception_ptr& e : errors_) e = nullptr;
    ++generation_;
  }
  work_cv_.notify_all();
  std::vector<std::exception_ptr> errors;
  if (spin_) spin_until([&] { return pending_.load(std::memory_order_acquire) == 0 || run_failed_.load(); }, kSpin);
  {
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [&] { return pending_ == 0 || run_failed_; });
    // After a failure the others get grace_s to stop (their collectives are being aborted).
    if (pending_ != 0 && !done_cv_.wait_for(lk, std::chrono::duration<double>(grace_s), [&] { return pending_ == 0; })) {
      wedged_ = true;
    }
    errors = errors_;
  }
  // The root cause: a rank's own failure, not another rank's report that the group was aborted.
  int first = -1;
  for (int pass = 0; pass < 2 && first < 0; ++pass) {
    for (int r = 0; r < size() && first < 0; ++r) {
      if (!errors[r]) continue;
      bool aborted = false;
      try {
        std::rethrow_exception(errors[r]);
      } catch (const GroupAborted&) {
        aborted = true;
      } catch (...) {
      }
      if (pass == 1 || !aborted) first = r;
    }
  }
  if (first < 0) return;
  const std::string stuck =
      wedged_ ? str_cat(" (other ranks did not stop within ", grace_s, " s: restart the process)") : "";
  try {
    std::rethrow_exception(errors[first]);
  } catch (const GroupAborted& e) {
    throw GroupAborted(str_cat(e.what(), stuck));
  } catch (const Error& e) {
    throw Error(e.kind(), str_cat("tensor-parallel rank ", first, ": ", e.what(), stuck));
  } catch (const std::exception& e) {
    throw_runtime_error("tensor-parallel rank ", first, ": ", e.what(), stuck);
  }
}

}  // namespace llmcore::parallel
