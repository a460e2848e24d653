// The CUDA backend's memory side: the caching allocator (size classes, reuse, accounting, release),
// device queries, copies in every direction, weight loading, and the device error word.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <set>
#include <vector>

#include "backend/cuda/cuda_allocator.h"
#include "cuda_test_util.h"

namespace llmcore {
namespace {

using cuda::CachingAllocator;
using namespace cuda_testing;

TEST(CudaAllocator, SizeClassesBoundTheSlack) {
  // Independent of any GPU: every class covers the request with bounded slack, is a multiple of
  // 512 bytes, and never decreases with the request.
  size_t previous = 0;
  for (size_t n :
       std::vector<size_t>{1, 511, 512, 513, 1000, 4096, 4097, 5000, 65535, 1 << 20, (1 << 20) + 1,
                           3'000'001, 63u << 20, 64u << 20, (64u << 20) + 1, size_t{20} << 30}) {
    const size_t c = CachingAllocator::size_class(n);
    EXPECT_GE(c, n);
    EXPECT_EQ(c % 512, 0u) << n;
    EXPECT_GE(c, previous) << n;
    if (n < (64u << 20)) {
      EXPECT_LE(c, std::max<size_t>(512, n + n / 8 + 512)) << n;
    } else {
      EXPECT_EQ(c % (2u << 20), 0u) << n;
      EXPECT_LT(c - n, 2u << 20) << n;
    }
    previous = c;
  }
}

TEST(CudaAllocator, ReusesFreedBlocksAndReturnsToZeroInUse) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  auto be = make_backend(DType::kBF16);
  auto* cb = dynamic_cast<CudaBackend*>(be.get());
  ASSERT_NE(cb, nullptr);
  const cuda::AllocatorStats before = cb->memory_stats();

  void* first = nullptr;
  {
    Tensor a = be->empty({1000, 37}, DType::kBF16);  // 74,000 bytes
    first = a.data();
    const cuda::AllocatorStats during = cb->memory_stats();
    EXPECT_EQ(during.in_use_bytes - before.in_use_bytes, CachingAllocator::size_class(74000));
  }
  const cuda::AllocatorStats after_free = cb->memory_stats();
  EXPECT_EQ(after_free.in_use_bytes, before.in_use_bytes);
  EXPECT_GE(after_free.cached_bytes, CachingAllocator::size_class(74000));

  // Same class again: the cached block comes back, no new cudaMalloc.
  {
    Tensor b = be->empty({74000}, DType::kU8);
    EXPECT_EQ(b.data(), first);
    EXPECT_EQ(cb->memory_stats().num_cuda_mallocs, after_free.num_cuda_mallocs);
    EXPECT_EQ(cb->memory_stats().num_cache_hits, after_free.num_cache_hits + 1);
  }

  // Many tensors alive at once are distinct; all return, and in-use goes back to where it was.
  {
    std::vector<Tensor> live;
    std::set<void*> seen;
    for (int i = 1; i <= 50; ++i) {
      live.push_back(be->empty({i * 1000}, DType::kF32));
      EXPECT_TRUE(seen.insert(live.back().data()).second);
    }
  }
  EXPECT_EQ(cb->memory_stats().in_use_bytes, before.in_use_bytes);

  // Releasing the cache gives the blocks back to CUDA: reserved == in use afterwards.
  EXPECT_GT(cb->release_cached_memory(), 0u);
  const cuda::AllocatorStats released = cb->memory_stats();
  EXPECT_EQ(released.cached_bytes, 0u);
  EXPECT_EQ(released.reserved_bytes, released.in_use_bytes);
}

TEST(CudaAllocator, TensorEmptyOnCudaUsesTheCachingAllocator) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  auto be = make_backend(DType::kF16);  // registers the allocator
  const auto before = CachingAllocator::instance().stats(0);
  {
    Tensor t = Tensor::empty({123, 45}, DType::kF32, Device::kCUDA);
    EXPECT_NE(t.data(), nullptr);
    // The class itself, or a cached block up to one class larger.
    const size_t cls = CachingAllocator::size_class(123 * 45 * 4);
    const size_t taken = CachingAllocator::instance().stats(0).in_use_bytes - before.in_use_bytes;
    EXPECT_GE(taken, cls);
    EXPECT_LE(taken, cls + cls / 8);
    // Usable by the backend's ops and copies.
    std::mt19937 rng(1);
    const Tensor host = random_rounded({123, 45}, DType::kF32, rng);
    be->copy(t, host);
    EXPECT_TRUE(same_bits(download(*be, t), host));
  }
  EXPECT_EQ(CachingAllocator::instance().stats(0).in_use_bytes, before.in_use_bytes);
  const Tensor none = Tensor::empty({0, 8}, DType::kBF16, Device::kCUDA);
  EXPECT_EQ(none.data(), nullptr);
}

TEST(CudaDevice, QueriesAndSelection) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  const int n = cuda::device_count();
  EXPECT_GE(n, 1);
  const cuda::MemoryInfo info = cuda::memory_info(0);
  EXPECT_GT(info.total_bytes, 0u);
  EXPECT_LE(info.free_bytes, info.total_bytes);
  EXPECT_FALSE(cuda::gpu_name(0).empty());
  const int before = cuda::current_device();
  cuda::set_device(n - 1);
  EXPECT_EQ(cuda::current_device(), n - 1);
  cuda::set_device(before);
  EXPECT_THROW(cuda::set_device(n), Error);
  EXPECT_THROW(cuda::set_device(-1), Error);
  EXPECT_THROW(create_cuda_backend(n, DType::kBF16), Error);
  EXPECT_THROW(create_cuda_backend(0, DType::kF32), Error);

  auto be = make_backend(DType::kBF16);
  auto* cb = dynamic_cast<CudaBackend*>(be.get());
  EXPECT_EQ(be->device(), Device::kCUDA);
  EXPECT_EQ(be->activation_dtype(), DType::kBF16);
  EXPECT_EQ(be->name(), "cuda:0");
  EXPECT_EQ(cb->device_index(), 0);
  EXPECT_NE(cb->stream(), nullptr);
  // Taking 64 MiB goes to cudaMalloc once no cached block can serve it. (The device's free
  // memory is not a reliable witness: other test processes allocate and free concurrently.)
  cb->release_cached_memory();
  const cuda::AllocatorStats stats_before = cb->memory_stats();
  const cuda::MemoryInfo mem = cb->memory_info();
  EXPECT_GT(mem.total_bytes, mem.free_bytes);
  Tensor big = be->empty({64 << 20}, DType::kU8);
  const cuda::AllocatorStats after = cb->memory_stats();
  EXPECT_EQ(after.num_cuda_mallocs, stats_before.num_cuda_mallocs + 1);
  EXPECT_GE(after.reserved_bytes, stats_before.reserved_bytes + (64u << 20));
}

TEST(CudaBackendCopy, RoundTripsEveryDirectionAndDtype) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  auto be = make_backend(DType::kBF16);
  std::mt19937 rng(7);
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16, DType::kI32, DType::kU8}) {
    for (int64_t n : {1, 7, 1000, 65537}) {
      // Random bytes: every bit pattern must survive H2D, D2D and D2H.
      Tensor host = Tensor::empty({n}, dtype);
      auto* bytes = static_cast<unsigned char*>(host.data());
      for (size_t i = 0; i < host.nbytes(); ++i) bytes[i] = static_cast<unsigned char>(rng());
      Tensor d1 = poisoned(*be, {n}, dtype);
      be->copy(d1, host);
      Tensor d2 = poisoned(*be, {1, n}, dtype);  // other shape, same element count
      be->copy(d2, d1);
      const Tensor back = download(*be, d2);
      EXPECT_TRUE(same_bits(back, host)) << dtype_name(dtype) << " n=" << n;
      // Host -> host through the backend too.
      Tensor host2 = Tensor::empty({n}, dtype);
      be->copy(host2, host);
      EXPECT_TRUE(same_bits(host2, host));
    }
  }
  // Mismatches are refused.
  Tensor a = be->empty({10}, DType::kF32);
  Tensor b = be->empty({11}, DType::kF32);
  Tensor c = be->empty({10}, DType::kI32);
  EXPECT_THROW(be->copy(a, b), Error);
  EXPECT_THROW(be->copy(a, c), Error);
  // A view in the middle of a tensor copies into exactly its rows.
  Tensor host = Tensor::empty({4, 3}, DType::kI32);
  for (int i = 0; i < 12; ++i) host.data_as<int32_t>()[i] = i;
  Tensor dev = upload(*be, host);
  Tensor row = Tensor::empty({1, 3}, DType::kI32);
  be->copy(row, dev.narrow_rows(2, 1));
  EXPECT_EQ(row.data_as<int32_t>()[0], 6);
  EXPECT_EQ(row.data_as<int32_t>()[2], 8);
}

TEST(CudaBackendCopy, PinnedHostSourceMayBeReusedAsSoonAsCopyReturns) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  auto be = make_backend(DType::kF16);
  const int64_t n = 1 << 22;  // 16 MiB: long enough that an unsynchronized DMA would still run
  int32_t* pinned = nullptr;
  ASSERT_EQ(cudaMallocHost(&pinned, n * sizeof(int32_t)), cudaSuccess);
  for (int64_t i = 0; i < n; ++i) pinned[i] = static_cast<int32_t>(i * 7);
  Tensor dev = poisoned(*be, {n}, DType::kI32);
  be->copy(dev, Tensor::wrap(pinned, {n}, DType::kI32));
  std::memset(pinned, 0, n * sizeof(int32_t));  // the caller reuses its buffer at once
  const Tensor back = download(*be, dev);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(back.data_as<int32_t>()[i], i * 7) << i;
  cudaFreeHost(pinned);
}

TEST(CudaBackendCopy, LoadWeightConvertsToTheActivationDtype) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  std::mt19937 rng(11);
  const int64_t n = 1 << 16;
  Tensor from_f32 = Tensor::empty({256, n / 256}, DType::kF32);
  Tensor from_f16 = Tensor::empty({n}, DType::kF16);
  Tensor from_bf16 = Tensor::empty({n}, DType::kBF16);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int64_t i = 0; i < n; ++i) {
    from_f32.data_as<float>()[i] = normal(rng);
    from_f16.data_as<uint16_t>()[i] = static_cast<uint16_t>(i);            // every fp16 pattern
    from_bf16.data_as<uint16_t>()[i] = static_cast<uint16_t>(i * 40503u);  // a spread of bf16
  }
  for (DType act : {DType::kBF16, DType::kF16}) {
    auto be = make_backend(act);
    for (const Tensor* src : {&from_f32, &from_f16, &from_bf16}) {
      const Tensor w = be->load_weight(*src);
      ASSERT_EQ(w.device(), Device::kCUDA);
      ASSERT_EQ(w.dtype(), act);
      ASSERT_EQ(w.shape(), src->shape());
      const Tensor got = download(*be, w);
      const Tensor src_f32 = to_f32(*src);
      for (int64_t i = 0; i < n; ++i) {
        const float f = src_f32.data_as<float>()[i];
        const uint16_t want = act == DType::kBF16 ? float_to_bf16(f) : float_to_fp16(f);
        const uint16_t bits = got.data_as<uint16_t>()[i];
        if (std::isnan(f)) {
          ASSERT_TRUE(std::isnan(to_f32(got).data_as<float>()[i])) << i;
        } else {
          ASSERT_EQ(bits, want) << short_name(act) << " from " << dtype_name(src->dtype()) << " at "
                                << i << " value " << f;
        }
      }
    }
    Tensor ints = Tensor::empty({4}, DType::kI32);
    EXPECT_THROW(be->load_weight(ints), Error);
  }
}

TEST(CudaBackendErrors, BadDeviceIndicesAreReportedAtTheNextSync) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  auto be = make_backend(DType::kBF16);
  std::mt19937 rng(3);
  const Tensor table_host = random_rounded({10, 16}, DType::kBF16, rng);
  const Tensor table = upload_as(*be, table_host, DType::kBF16);
  const Tensor ids = upload(*be, int_tensor({1, 10, 2}));  // 10 is outside [0, 10)
  Tensor out = poisoned(*be, {3, 16}, DType::kBF16);
  be->embedding(out, ids, table, 0, 10);
  EXPECT_THROW(be->synchronize(), Error);
  be->synchronize();  // the error word was cleared: no second report
  const Tensor got = download_f32(*be, out);
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ(got.data_as<float>()[i], table_host.data_as<float>()[16 + i]);
    EXPECT_TRUE(std::isnan(got.data_as<float>()[16 + i]));  // the bad row is NaN
    EXPECT_EQ(got.data_as<float>()[32 + i], table_host.data_as<float>()[32 + i]);
  }
  // The same report comes with a device -> host copy.
  be->embedding(out, upload(*be, int_tensor({-1, 0, 0})), table, 0, 10);
  Tensor host = Tensor::empty({3, 16}, DType::kBF16);
  EXPECT_THROW(be->copy(host, out), Error);
  be->synchronize();
}

}  // namespace
}  // namespace llmcore
