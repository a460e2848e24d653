// ThreadCommunicator: ranks that are threads of one process, over host memory. Each collective
// posts the rank's buffer, meets the others at a barrier, reads every rank's buffer in rank order
// and meets them again before anyone's buffer changes.
#include <condition_variable>
#include <cstring>

#include "parallel/communicator.h"

namespace llmcore::parallel {

namespace {

struct ThreadGroup {
  explicit ThreadGroup(int world) : world(world), src(world, nullptr), state(std::make_shared<GroupState>()) {}

  // Returns when every rank has arrived; throws GroupAborted if the group is aborted first.
  void barrier(int rank) {
    std::unique_lock<std::mutex> lk(mu);
    state->check(rank);
    const int64_t gen = generation;
    if (++arrived == world) {
      arrived = 0;
      ++generation;
      cv.notify_all();
      return;
    }
    cv.wait(lk, [&] { return generation != gen || state->aborted(); });
    if (generation == gen) state->check(rank);
  }

  void abort(const std::string& reason) {
    state->abort(reason);
    std::lock_guard<std::mutex> lk(mu);
    cv.notify_all();
  }

  const int world;
  std::mutex mu;
  std::condition_variable cv;
  int arrived = 0;
  int64_t generation = 0;
  std::vector<const float*> src;  // each rank's posted buffer
  std::shared_ptr<GroupState> state;
};

void check_host_f32(const Tensor& t, const char* what) {
  LLMCORE_CHECK(t.device() == Device::kCPU && t.dtype() == DType::kF32, what,
                " must be a float32 host tensor (the CPU backend's), got ", device_name(t.device()), " ",
                dtype_name(t.dtype()));
}

class ThreadCommunicator final : public Communicator {
 public:
  ThreadCommunicator(std::shared_ptr<ThreadGroup> g, int rank)
      : Communicator(g->state), g_(std::move(g)), rank_(rank) {}

  int rank() const override { return rank_; }
  int world_size() const override { return g_->world; }

  void all_reduce_sum(Tensor& x) override {
    check_host_f32(x, "all_reduce_sum x");
    const int64_t n = x.numel();
    g_->src[rank_] = x.data_as<float>();
    g_->barrier(rank_);
    sum_.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) sum_[i] = g_->src[0][i];
    for (int r = 1; r < g_->world; ++r) {
      const float* s = g_->src[r];
      for (int64_t i = 0; i < n; ++i) sum_[i] += s[i];
    }
    g_->barrier(rank_);  // nobody reads x any more
    if (n) std::memcpy(x.data(), sum_.data(), static_cast<size_t>(n) * sizeof(float));
  }

  void all_gather_columns(Tensor& out, const Tensor& in) override {
    check_host_f32(out, "all_gather_columns out");
    check_host_f32(in, "all_gather_columns in");
    LLMCORE_CHECK(out.ndim() == 2 && in.ndim() == 2 && out.dim(0) == in.dim(0), "all_gather_columns: out ",
                  shape_str(out.shape()), ", in ", shape_str(in.shape()));
    const int64_t rows = in.dim(0), n = in.dim(1), N = out.dim(1);
    LLMCORE_CHECK(n * g_->world >= N && n * (g_->world - 1) < N, "all_gather_columns: ", g_->world,
                  " parts of ", n, " columns cannot make ", N);
    g_->src[rank_] = in.data_as<float>();
    g_->barrier(rank_);
    float* dst = out.data_as<float>();
    for (int r = 0; r < g_->world; ++r) {
      const auto [begin, end] = column_part(N, g_->world, r);
      for (int64_t row = 0; row < rows && end > begin; ++row) {
        std::memcpy(dst + row * N + begin, g_->src[r] + row * n, static_cast<size_t>(end - begin) * sizeof(float));
      }
    }
    g_->barrier(rank_);
  }

  void synchronize() override { g_->state->check(rank_); }

  void abort(const std::string& reason) override { g_->abort(reason); }

 private:
  std::shared_ptr<ThreadGroup> g_;
  const int rank_;
  std::vector<float> sum_;
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> create_thread_communicators(int world) {
  LLMCORE_CHECK(world >= 1, "world size ", world);
  auto g = std::make_shared<ThreadGroup>(world);
  std::vector<std::unique_ptr<Communicator>> comms;
  for (int r = 0; r < world; ++r) comms.push_back(std::make_unique<ThreadCommunicator>(g, r));
  return comms;
}

}  // namespace llmcore::parallel
