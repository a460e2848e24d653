// The CUDA backend's row-wise ops against the CPU backend: embedding, rms_norm, add_rms_norm,
// silu_and_mul, gather_rows and rotary_embedding, in bf16 and fp16, over hidden sizes that take
// the 16-byte vector paths and sizes that do not, and 1 to 256 tokens. Inputs are random values
// exactly representable in the dtype, so both backends see the same numbers; outputs start as
// NaN so an unwritten element fails.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "cuda_test_util.h"

namespace llmcore {
namespace {

using namespace cuda_testing;

constexpr DType kDtypes[] = {DType::kBF16, DType::kF16};
constexpr int64_t kTokenCounts[] = {1, 7, 256};

std::vector<int32_t> random_ids(int64_t n, int32_t limit, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> dist(0, limit - 1);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = dist(rng);
  return ids;
}

TEST(CudaOps, EmbeddingMatchesCpuBitwise) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  auto cpu = create_cpu_backend(0);
  std::mt19937 rng(101);
  for (DType dt : kDtypes) {
    auto be = make_backend(dt);
    for (int64_t hidden : {3, 8, 100, 4096}) {
      for (int64_t tokens : kTokenCounts) {
        const int64_t vocab = 50;
        const Tensor table = random_rounded({vocab, hidden}, dt, rng);
        const Tensor ids = int_tensor(random_ids(tokens, vocab, rng));
        Tensor want = Tensor::empty({tokens, hidden}, DType::kF32);
        cpu->embedding(want, ids, table, 0, vocab);
        Tensor out = poisoned(*be, {tokens, hidden}, dt);
        be->embedding(out, upload(*be, ids), upload_as(*be, table, dt), 0, vocab);
        EXPECT_TRUE(same_bits(download_f32(*be, out), want))
            << short_name(dt) << " hidden " << hidden << " tokens " << tokens;
        // A vocab-parallel shard holding ids [20, 37): other ids give zero rows, as on the CPU.
        const Tensor shard_host = Tensor::wrap(const_cast<float*>(table.data_as<float>()) + 20 * hidden,
                                               {17, hidden}, DType::kF32);
        cpu->embedding(want, ids, shard_host, 20, vocab);
        be->embedding(out, upload(*be, ids), upload_as(*be, shard_host, dt), 20, vocab);
        EXPECT_TRUE(same_bits(download_f32(*be, out), want))
            << short_name(dt) << " shard, hidden " << hidden << " tokens " << tokens;
      }
    }
  }
}

TEST(CudaOps, RmsNormMatchesCpu) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  auto cpu = create_cpu_backend(0);
  std::mt19937 rng(102);
  for (DType dt : kDtypes) {
    auto be = make_backend(dt);
    for (int64_t hidden : {1, 8, 100, 4096, 5000}) {
      for (int64_t tokens : kTokenCounts) {
        const Tensor x = random_rounded({tokens, hidden}, dt, rng, -2.0f, 2.0f);
        const Tensor w = random_rounded({hidden}, dt, rng, 0.5f, 1.5f);
        Tensor want = Tensor::empty({tokens, hidden}, DType::kF32);
        cpu->rms_norm(want, x, w, 1e-6f);
        Tensor out = poisoned(*be, {tokens, hidden}, dt);
        const Tensor x_dev = upload_as(*be, x, dt);
        const Tensor w_dev = upload_as(*be, w, dt);
        be->rms_norm(out, x_dev, w_dev, 1e-6f);
        // x / rms rounded, times w rounded: two roundings plus fp32 noise.
        EXPECT_TRUE(all_close(download_f32(*be, out), want, rounding_rtol(dt, 3), 1e-6))
            << short_name(dt) << " hidden " << hidden << " tokens " << tokens;
        // In place (out aliases x) gives the same bits.
        Tensor in_place = upload_as(*be, x, dt);
        be->rms_norm(in_place, in_place, w_dev, 1e-6f);
        EXPECT_TRUE(same_bits(download(*be, in_place), download(*be, out)));
      }
    }
  }
}

TEST(CudaOps, AddRmsNormMatchesCpuAndStoresTheRoundedResidual) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  auto cpu = create_cpu_backend(0);
  std::mt19937 rng(103);
  for (DType dt : kDtypes) {
    auto be = make_backend(dt);
    for (int64_t hidden : {1, 8, 100, 4096}) {
      for (int64_t tokens : kTokenCounts) {
        const Tensor x = random_rounded({tokens, hidden}, dt, rng, -2.0f, 2.0f);
        const Tensor residual = random_rounded({tokens, hidden}, dt, rng, -4.0f, 4.0f);
        const Tensor w = random_rounded({hidden}, dt, rng, 0.5f, 1.5f);
        Tensor want_x = to_host_dtype(x, DType::kF32);
        Tensor want_res = to_host_dtype(residual, DType::kF32);
        cpu->add_rms_norm(want_x, want_res, w, 1e-5f);

        Tensor x_dev = upload_as(*be, x, dt);
        Tensor res_dev = upload_as(*be, residual, dt);
        be->add_rms_norm(x_dev, res_dev, upload_as(*be, w, dt), 1e-5f);
        // The residual stream is stored in the activation dtype: exactly round(x + residual).
        const Tensor got_res = download_f32(*be, res_dev);
        for (int64_t i = 0; i < x.numel(); ++i) {
          const float sum = round_to(x.data_as<float>()[i] + residual.data_as<float>()[i], dt);
          ASSERT_EQ(got_res.data_as<float>()[i], sum) << short_name(dt) << " element " << i;
        }
        // The normed output: the CPU normalizes the unrounded sum, so one rounding more.
        EXPECT_TRUE(all_close(download_f32(*be, x_dev), want_x, rounding_rtol(dt, 4), 1e-6))
            << short_name(dt) << " hidden " << hidden << " tokens " << tokens;
      }
    }
  }
}

TEST(CudaOps, NormsAreBatchInvariant) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  std::mt19937 rng(104);
  for (DType dt : kDtypes) {
    auto be = make_backend(dt);
    const int64_t hidden = 4096, tokens = 256;
    const Tensor x = random_rounded({tokens, hidden}, dt, rng, -2.0f, 2.0f);
    const Tensor residual = random_rounded({tokens, hidden}, dt, rng);
    const Tensor w_dev = upload_as(*be, random_rounded({hidden}, dt, rng, 0.5f, 1.5f), dt);
    const Tensor x_dev = upload_as(*be, x, dt);
    Tensor all = poisoned(*be, {tokens, hidden}, dt);
    be->rms_norm(all, x_dev, w_dev, 1e-6f);
    Tensor x_all = upload_as(*be, x, dt), res_all = upload_as(*be, residual, dt);
    be->add_rms_norm(x_all, res_all, w_dev, 1e-6f);
    const Tensor all_host = download(*be, all), fused_host = download(*be, x_all);
    for (int64_t row : {0, 100, 255}) {
      Tensor one = poisoned(*be, {1, hidden}, dt);
      be->rms_norm(one, upload_as(*be, x.narrow_rows(row, 1), dt), w_dev, 1e-6f);
      EXPECT_TRUE(same_bits(download(*be, one), all_host.narrow_rows(row, 1))) << row;
      Tensor x_one = upload_as(*be, x.narrow_rows(row, 1), dt);
      Tensor res_one = upload_as(*be, residual.narrow_rows(row, 1), dt);
      be->add_rms_norm(x_one, res_one, w_dev, 1e-6f);
      EXPECT_TRUE(same_bits(download(*be, x_one), fused_host.narrow_rows(row, 1))) << row;
    }
  }
}

TEST(CudaOps, SiluAndMulMatchesCpu) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  auto cpu = create_cpu_backend(0);
  std::mt19937 rng(105);
  for (DType dt : kDtypes) {
    auto be = make_backend(dt);
    for (int64_t inter : {1, 8, 100, 1376}) {
      for (int64_t tokens : kTokenCounts) {
        const Tensor x = random_rounded({tokens, 2 * inter}, dt, rng, -6.0f, 6.0f);
        Tensor want = Tensor::empty({tokens, inter}, DType::kF32);
        cpu->silu_and_mul(want, x);
        Tensor out = poisoned(*be, {tokens, inter}, dt);
        be->silu_and_mul(out, upload_as(*be, x, dt));
        EXPECT_TRUE(all_close(download_f32(*be, out), want, rounding_rtol(dt, 3), 1e-6))
            << short_name(dt) << " inter " << inter << " tokens " << tokens;
      }
    }
  }
}

TEST(CudaOps, GatherRowsMatchesCpuBitwiseForAnyDtype) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  auto cpu = create_cpu_backend(0);
  auto be = make_backend(DType::kBF16);
  std::mt19937 rng(106);
  for (DType dt : {DType::kBF16, DType::kF16, DType::kF32, DType::kI32}) {
    for (int64_t cols : {3, 8, 100}) {
      for (int64_t picked : {1, 5, 256}) {
        const int64_t rows = 40;
        Tensor x = Tensor::empty({rows, cols}, dt);
        auto* bytes = static_cast<unsigned char*>(x.data());
        for (size_t i = 0; i < x.nbytes(); ++i) bytes[i] = static_cast<unsigned char>(rng());
        const Tensor idx = int_tensor(random_ids(picked, rows, rng));
        Tensor want = Tensor::empty({picked, cols}, dt);
        cpu->gather_rows(want, x, idx);
        Tensor out = poisoned(*be, {picked, cols}, dt);
        be->gather_rows(out, upload(*be, x), upload(*be, idx));
        EXPECT_TRUE(same_bits(download(*be, out), want))
            << dtype_name(dt) << " cols " << cols << " picked " << picked;
      }
    }
  }
  // An index past the source rows is reported at the next sync.
  Tensor out = poisoned(*be, {2, 4}, DType::kF32);
  be->gather_rows(out, be->empty({3, 4}, DType::kF32), upload(*be, int_tensor({0, 3})));
  EXPECT_THROW(be->synchronize(), Error);
}

// cos/sin table as model/rope builds it: row p = cos(p * f_i) for i < D/2, then sin, computed
// in double from inv_freq f_i = theta^(-2i/D).
Tensor rope_table(int64_t max_pos, int head_dim, double theta) {
  Tensor t = Tensor::empty({max_pos, head_dim}, DType::kF32);
  const int half = head_dim / 2;
  for (int64_t p = 0; p < max_pos; ++p) {
    for (int i = 0; i < half; ++i) {
      const double angle = static_cast<double>(p) * std::pow(theta, -2.0 * i / head_dim);
      t.data_as<float>()[p * head_dim + i] = static_cast<float>(std::cos(angle));
      t.data_as<float>()[p * head_dim + half + i] = static_cast<float>(std::sin(angle));
    }
  }
  return t;
}

TEST(CudaOps, RotaryEmbeddingMatchesCpu) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  auto cpu = create_cpu_backend(0);
  std::mt19937 rng(107);
  const AttnShape shapes[] = {{4, 2, 128}, {3, 1, 64}, {2, 2, 6}, {8, 8, 16}};
  for (DType dt : kDtypes) {
    auto be = make_backend(dt);
    for (const AttnShape& shape : shapes) {
      const int64_t max_pos = 300;
      const Tensor table = rope_table(max_pos, shape.head_dim, 10000.0);
      const Tensor table_dev = upload(*be, table);
      for (int64_t tokens : kTokenCounts) {
        const Tensor qkv = random_rounded({tokens, shape.qkv_width()}, dt, rng, -3.0f, 3.0f);
        const Tensor pos = int_tensor(random_ids(tokens, static_cast<int32_t>(max_pos), rng));
        Tensor want = to_host_dtype(qkv, DType::kF32);
        cpu->rotary_embedding(want, pos, table, shape);
        Tensor got = upload_as(*be, qkv, dt);
        be->rotary_embedding(got, upload(*be, pos), table_dev, shape);
        // The whole row: q and k rotated (one rounding), v untouched (exact).
        EXPECT_TRUE(all_close(download_f32(*be, got), want, rounding_rtol(dt, 2), 1e-5))
            << short_name(dt) << " heads " << shape.num_heads << "/" << shape.num_kv_heads << " D "
            << shape.head_dim << " tokens " << tokens;
      }
    }
    // A position outside the table is reported at the next sync and poisons that row's q and k.
    const AttnShape shape{2, 1, 8};
    Tensor qkv = upload_as(*be, random_rounded({2, shape.qkv_width()}, dt, rng), dt);
    be->rotary_embedding(qkv, upload(*be, int_tensor({0, 5})), upload(*be, rope_table(5, 8, 1e4)),
                         shape);
    EXPECT_THROW(be->synchronize(), Error);
    const Tensor row = download_f32(*be, qkv);
    EXPECT_TRUE(std::isnan(row.data_as<float>()[shape.qkv_width()]));
  }
}

}  // namespace
}  // namespace llmcore

namespace llmcore {
namespace {

using namespace cuda_testing;

// Dummy weights drawn on the GPU are the CPU twin's float32 values rounded to the dtype, bit for
// bit, also for a view that starts inside a larger tensor (fused weights fill row ranges).
TEST(CudaOps, FillDummyMatchesCpuBitwise) {
  LLMCORE_SKIP_WITHOUT_CUDA();
  auto cpu = create_cpu_backend(0);
  for (DType dt : kDtypes) {
    auto be = make_backend(dt);
    for (int64_t n : {int64_t{1}, int64_t{1000}, int64_t{3} << 20}) {
      for (uint64_t stream : {uint64_t{0}, uint64_t{0x9d1f23a55ull}}) {
        Tensor want = Tensor::empty({n}, DType::kF32);
        cpu->fill_dummy(want, stream, 0.5f, {});
        for (int64_t i = 0; i < n; ++i) want.data_as<float>()[i] = round_to(want.data_as<float>()[i], dt);
        Tensor whole = poisoned(*be, {n + 8}, dt);
        Tensor view = Tensor::wrap(static_cast<char*>(whole.data()) + 8 * dtype_size(dt), {n}, dt, Device::kCUDA);
        be->fill_dummy(view, stream, 0.5f, {});
        const Tensor got = download_f32(*be, whole);
        Tensor got_view = Tensor::wrap(got.data_as<float>() + 8, {n}, DType::kF32);
        EXPECT_TRUE(same_bits(got_view, want)) << short_name(dt) << " n " << n << " stream " << stream;
        for (int i = 0; i < 8; ++i) EXPECT_TRUE(std::isnan(got.data_as<float>()[i])) << "wrote before the view";
      }
    }
    // A column slice [5, 5 + 7) of a [6, 19] tensor drawn on its own holds the whole tensor's
    // numbers (tensor-parallel shards of dummy weights), as the CPU twin draws them.
    Tensor whole_cpu = Tensor::empty({6, 19}, DType::kF32);
    cpu->fill_dummy(whole_cpu, 77, 0.5f, {});
    Tensor cols = be->empty({6, 7}, dt);
    be->fill_dummy(cols, 77, 0.5f, {5, 19});
    const Tensor got = download_f32(*be, cols);
    for (int r = 0; r < 6; ++r)
      for (int c = 0; c < 7; ++c)
        EXPECT_EQ(got.data_as<float>()[r * 7 + c], round_to(whole_cpu.data_as<float>()[r * 19 + 5 + c], dt));
  }
}

}  // namespace
}  // namespace llmcore
