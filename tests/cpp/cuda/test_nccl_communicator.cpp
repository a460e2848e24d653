// The NCCL communicator on 2+ GPUs (skipped with fewer): the one-shot peer-memory all-reduces (LL
// up to 256 KiB, two-phase up to 8 MiB) give every rank the rank-ordered float sum rounded once
// (exact, for every message size they take, over many calls so both buffers and the epoch counters
// are exercised, small and large messages interleaved), the NCCL fallback for larger messages
// agrees within rounding, the fused all-reduce + add_rms_norm has the bits of the two kernels run
// one after the other, and all_gather_columns places every rank's columns.
#ifdef LLMCORE_WITH_NCCL

#include <gtest/gtest.h>

#include <random>
#include <thread>

#include "backend/cuda/nccl_communicator.h"
#include "cuda_test_util.h"

namespace llmcore {
namespace {

using namespace cuda_testing;

// Runs fn(rank) on one thread per rank (each rank's communicator is driven by its own thread).
void on_ranks(int world, const std::function<void(int)>& fn) {
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) threads.emplace_back(fn, r);
  for (auto& t : threads) t.join();
}

TEST(NcclCommunicator, AllReduceSumsInRankOrderAndAllGatherPlacesColumns) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  const int world = std::min(4, cuda::device_count());
  if (world < 2) GTEST_SKIP() << "needs 2 GPUs";
  std::vector<std::unique_ptr<Backend>> owned;
  std::vector<CudaBackend*> backends;
  for (int r = 0; r < world; ++r) {
    owned.push_back(create_cuda_backend(r, DType::kBF16));
    backends.push_back(static_cast<CudaBackend*>(owned.back().get()));
  }
  auto comms = create_nccl_communicators(backends, 60);
  std::mt19937 rng(5);
  // Sizes in elements: one 16-byte unit, a decode row of 4096, 32 rows (256 KiB, the largest LL
  // message), one unit more (two-phase), 1024 rows (8 MiB, the largest two-phase message), then
  // 4096 rows (16 MiB: NCCL). Repeated so the buffers alternate.
  const std::vector<int64_t> sizes = {8, 4096, 4096 * 32, 4096 * 32 + 8, 4096 * 1024, 4096 * 4096};
  for (int round = 0; round < 3; ++round) {
    for (int64_t n : sizes) {
      std::vector<Tensor> host;
      for (int r = 0; r < world; ++r) host.push_back(random_rounded({n}, DType::kBF16, rng));
      Tensor want = Tensor::empty({n}, DType::kF32);
      for (int64_t i = 0; i < n; ++i) {
        float acc = 0;
        for (int r = 0; r < world; ++r) acc += host[r].data_as<float>()[i];
        want.data_as<float>()[i] = round_to(acc, DType::kBF16);
      }
      std::vector<Tensor> got(world);
      on_ranks(world, [&](int r) {
        Tensor x = upload_as(*backends[r], host[r], DType::kBF16);
        comms[r]->all_reduce_sum(x);
        comms[r]->synchronize();
        got[r] = download_f32(*backends[r], x);
      });
      const bool one_shot = n * 2 <= (int64_t{8} << 20);
      for (int r = 0; r < world; ++r) {
        if (one_shot) {
          EXPECT_TRUE(same_bits(got[r], want)) << "rank " << r << " n " << n << " round " << round;
        } else {
          EXPECT_TRUE(all_close(got[r], want, 0.02, 0.02)) << "rank " << r << " n " << n;
          EXPECT_TRUE(same_bits(got[r], got[0])) << "ranks disagree, n " << n;
        }
      }
    }
  }
  // 1000 vocabulary columns over the ranks, the last part shorter.
  const int64_t cols = 1000, part = (cols + world - 1) / world, rows = 3;
  std::vector<Tensor> parts;
  for (int r = 0; r < world; ++r) parts.push_back(random_rounded({rows, part}, DType::kF32, rng));
  on_ranks(world, [&](int r) {
    Tensor in = backends[r]->empty({rows, part}, DType::kF32);
    backends[r]->copy(in, parts[r]);
    Tensor out = backends[r]->empty({rows, cols}, DType::kF32);
    comms[r]->all_gather_columns(out, in);
    comms[r]->synchronize();
    Tensor h = Tensor::empty({rows, cols}, DType::kF32);
    backends[r]->copy(h, out);
    for (int64_t row = 0; row < rows; ++row)
      for (int64_t c = 0; c < cols; ++c)
        ASSERT_EQ(h.data_as<float>()[row * cols + c], parts[c / part].data_as<float>()[row * part + c % part]);
  });
  on_ranks(world, [&](int r) { comms[r].reset(); });  // destroyed together
}

// all_reduce_add_rms_norm = all_reduce_sum then add_rms_norm, bit for bit, on every rank: the
// reference adds the rank-ordered sums (computed here) with the backend's add_rms_norm kernel.
TEST(NcclCommunicator, FusedAllReduceAddRmsNormHasTheBitsOfTheTwoSteps) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  const int world = std::min(4, cuda::device_count());
  if (world < 2) GTEST_SKIP() << "needs 2 GPUs";
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    std::vector<std::unique_ptr<Backend>> owned;
    std::vector<CudaBackend*> backends;
    for (int r = 0; r < world; ++r) {
      owned.push_back(create_cuda_backend(r, dtype));
      backends.push_back(static_cast<CudaBackend*>(owned.back().get()));
    }
    auto comms = create_nccl_communicators(backends, 60);
    std::mt19937 rng(11);
    const float eps = 1e-5f;
    // (rows, hidden): a decode row of the 8B shape, a batch of 3, the largest LL message
    // (256 KiB), more rows than the LL grid has blocks (several rows per block), a hidden size of
    // one warp's width or less.
    const std::vector<std::pair<int64_t, int64_t>> shapes = {{1, 4096}, {3, 4096}, {32, 4096}, {100, 1024},
                                                             {5, 136}};
    for (int round = 0; round < 2; ++round) {
      for (const auto& [rows, hidden] : shapes) {
        std::vector<Tensor> parts;
        for (int r = 0; r < world; ++r) parts.push_back(random_rounded({rows, hidden}, dtype, rng));
        const Tensor residual = random_rounded({rows, hidden}, dtype, rng, -4.0f, 4.0f);
        const Tensor weight = random_rounded({hidden}, dtype, rng, 0.5f, 1.5f);
        Tensor sum = Tensor::empty({rows, hidden}, DType::kF32);
        for (int64_t i = 0; i < rows * hidden; ++i) {
          float acc = 0;
          for (int r = 0; r < world; ++r) acc += parts[r].data_as<float>()[i];
          sum.data_as<float>()[i] = round_to(acc, dtype);
        }
        on_ranks(world, [&](int r) {
          Backend& be = *backends[r];
          Tensor x = upload_as(be, parts[r], dtype), res = upload_as(be, residual, dtype);
          const Tensor w = upload_as(be, weight, dtype);
          ASSERT_TRUE(comms[r]->all_reduce_add_rms_norm(x, res, w, eps)) << rows << " x " << hidden;
          comms[r]->synchronize();
          Tensor want_x = upload_as(be, sum, dtype), want_res = upload_as(be, residual, dtype);
          be.add_rms_norm(want_x, want_res, w, eps);
          be.synchronize();
          EXPECT_TRUE(same_bits(download_f32(be, x), download_f32(be, want_x)))
              << short_name(dtype) << " rank " << r << " " << rows << " x " << hidden;
          EXPECT_TRUE(same_bits(download_f32(be, res), download_f32(be, want_res)))
              << short_name(dtype) << " rank " << r << " " << rows << " x " << hidden;
        });
      }
    }
    // Larger than the LL buffers, or rows wider than 4096: not fused, nothing done.
    on_ranks(world, [&](int r) {
      Backend& be = *backends[r];
      for (const auto& [rows, hidden] : {std::pair<int64_t, int64_t>{33, 4096}, {1, 8192}}) {
        Tensor x = be.empty({rows, hidden}, dtype), res = be.empty({rows, hidden}, dtype);
        const Tensor w = be.empty({hidden}, dtype);
        EXPECT_FALSE(comms[r]->all_reduce_add_rms_norm(x, res, w, eps)) << rows << " x " << hidden;
      }
    });
    on_ranks(world, [&](int r) { comms[r].reset(); });
  }
}

}  // namespace
}  // namespace llmcore

#endif  // LLMCORE_WITH_NCCL
