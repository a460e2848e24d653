// WorkerPool: one thread per tensor-parallel rank. run(fn) hands fn(rank) to every worker at once
// and returns when all have finished, so each rank's device work is always driven by the same
// thread (its communicator is never touched by another).
#pragma once

#include <atomic>
#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace llmcore::parallel {

class WorkerPool {
 public:
  // spin: waiting threads (the workers between runs, the caller during one) poll for a few
  // milliseconds before sleeping, which saves the wake-up latency on every decode step; for GPU
  // ranks, whose threads only launch work. CPU ranks compute on every core and must not spin.
  WorkerPool(int num_workers, bool spin);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  int size() const { return static_cast<int>(threads_.size()); }

  // Runs fn(rank) on every worker and waits for all. When fn throws on a worker, on_error(rank,
  // exception) runs right away on that worker's thread (to abort its communicator, so the other
  // ranks stop waiting for it); run then rethrows the root cause: the first exception that is not
  // a GroupAborted (a rank stopped because another failed), prefixed with its rank and keeping its
  // kind (ValueError stays ValueError). Ranks that have not returned `grace_s` after a failure are
  // left behind (wedged(): stuck in a device call) and run throws without them.
  void run(const std::function<void(int)>& fn, const std::function<void(int, const std::exception&)>& on_error,
           double grace_s = 10);

  // Inside fn: returns once every rank of the current run has called it; throws GroupAborted
  // instead when a rank of this run has failed. Ranks meet here before enqueuing collectives, so a
  // rank that fails while preparing a step leaves no peer waiting inside a collective.
  void barrier(int rank);

  // A run left ranks behind: their threads may never return, so the pool (and whatever those
  // ranks use) must be leaked, not destroyed.
  bool wedged() const { return wedged_; }

 private:
  void loop(int rank);

  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  // The current run's callables, copied: a rank left behind keeps its copy alive.
  std::shared_ptr<const std::function<void(int)>> fn_;
  std::shared_ptr<const std::function<void(int, const std::exception&)>> on_error_;
  const bool spin_;
  std::atomic<int64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> run_failed_{false};  // a rank of the current run threw
  std::condition_variable barrier_cv_;
  int barrier_arrived_ = 0;
  std::atomic<int64_t> barrier_generation_{0};
  bool wedged_ = false;
  bool stop_ = false;
  std::vector<std::exception_ptr> errors_;  // per rank, of the current run
};

}  // namespace llmcore::parallel
