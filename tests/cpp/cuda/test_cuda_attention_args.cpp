// Argument checks of the paged-attention launcher and the workspace size formula. The launcher
// validates before touching memory, so these run without a GPU (the tensors are device-tagged
// views of a host buffer that no kernel ever reads).
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <string>

#include "cuda/test_cuda_attention_util.h"

namespace llmcore {
namespace {

constexpr int kPart = kernels::kPagedAttentionPartitionSize;

alignas(256) unsigned char g_fake_device_memory[256];

Tensor fake(Shape shape, DType dtype, Device device = Device::kCUDA) {
  return Tensor::wrap(g_fake_device_memory, std::move(shape), dtype, device);
}

// A well-formed call: 3 tokens of 2 sequences, Hq 4, Hkv 2, D 64, 10 blocks of 16.
struct Call {
  AttnShape shape{4, 2, 64};
  Tensor out = fake({3, 4 * 64}, DType::kBF16);
  Tensor qkv = fake({3, 8 * 64}, DType::kBF16);
  Tensor k_cache = fake({10, 2, 16, 64}, DType::kBF16);
  Tensor v_cache = fake({10, 2, 16, 64}, DType::kBF16);
  AttentionMetadata meta;
  float scale = 0.125f;
  int window = 0;
  size_t workspace_bytes = 1 << 20;
  void* workspace = g_fake_device_memory;
  Call() {
    meta.num_seqs = 2;
    meta.max_query_len = 2;
    meta.max_seq_len = 40;
    meta.query_start_loc = fake({3}, DType::kI32);
    meta.seq_lens = fake({2}, DType::kI32);
    meta.block_tables = fake({2, 3}, DType::kI32);
    meta.slot_mapping = fake({3}, DType::kI32);
  }
  void run() {
    kernels::paged_attention(out, qkv, k_cache, v_cache, meta, shape, scale, window, workspace,
                             workspace_bytes, nullptr);
  }
};

// Expects `mutate` to make the call throw an Error of `kind` whose message contains `needle`.
void expect_rejected(const std::function<void(Call&)>& mutate, ErrorKind kind,
                     const std::string& needle) {
  Call c;
  mutate(c);
  try {
    c.run();
    ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(CudaAttentionArgs, WorkspaceBytesFollowTheLongestSequence) {
  AttentionMetadata meta;
  meta.num_seqs = 3;
  const AttnShape shape{8, 2, 128};
  meta.max_seq_len = kPart;  // one partition: nothing to split
  EXPECT_EQ(kernels::paged_attention_workspace_bytes(meta, shape), 0u);
  meta.max_seq_len = kPart + 1;  // two partitions
  EXPECT_EQ(kernels::paged_attention_workspace_bytes(meta, shape), 3u * 8 * 2 * (128 + 2) * 4);
  meta.max_seq_len = 8192;  // sixteen
  EXPECT_EQ(kernels::paged_attention_workspace_bytes(meta, shape), 3u * 8 * 16 * (128 + 2) * 4);
  meta.min_query_len = 2;  // prompt rows only: nothing is split
  EXPECT_EQ(kernels::paged_attention_workspace_bytes(meta, shape), 0u);
  meta.min_query_len = 1;
  meta.num_seqs = 0;
  EXPECT_EQ(kernels::paged_attention_workspace_bytes(meta, shape), 0u);
}

TEST(CudaAttentionArgs, RejectsUnsupportedHeadDim) {
  expect_rejected(
      [](Call& c) {
        c.shape.head_dim = 80;
        c.out = fake({3, 4 * 80}, DType::kBF16);
        c.qkv = fake({3, 8 * 80}, DType::kBF16);
        c.k_cache = c.v_cache = fake({10, 2, 16, 80}, DType::kBF16);
      },
      ErrorKind::kValue, "head_dim 80");
}

TEST(CudaAttentionArgs, RejectsBadWindowAndScale) {
  expect_rejected([](Call& c) { c.window = -1; }, ErrorKind::kValue, "sliding_window");
  expect_rejected([](Call& c) { c.scale = std::nanf(""); }, ErrorKind::kValue, "scale");
}

TEST(CudaAttentionArgs, RejectsWrongDtypesShapesAndDevices) {
  expect_rejected([](Call& c) { c.qkv = fake({3, 8 * 64}, DType::kF32); }, ErrorKind::kRuntime,
                  "float32");
  expect_rejected([](Call& c) { c.out = fake({3, 4 * 64}, DType::kF16); }, ErrorKind::kRuntime,
                  "attention out");
  expect_rejected([](Call& c) { c.qkv = fake({3, 7 * 64}, DType::kBF16); }, ErrorKind::kRuntime,
                  "attention qkv");
  expect_rejected([](Call& c) { c.v_cache = fake({10, 2, 8, 64}, DType::kBF16); },
                  ErrorKind::kRuntime, "v_cache");
  expect_rejected([](Call& c) { c.k_cache = fake({10, 2, 16, 64}, DType::kBF16, Device::kCPU); },
                  ErrorKind::kRuntime, "k_cache");
  expect_rejected([](Call& c) { c.meta.seq_lens = fake({3}, DType::kI32); }, ErrorKind::kRuntime,
                  "seq_lens");
  expect_rejected([](Call& c) { c.meta.block_tables = fake({2, 3}, DType::kI64); },
                  ErrorKind::kRuntime, "block_tables");
  expect_rejected([](Call& c) { c.shape.num_kv_heads = 3; }, ErrorKind::kRuntime, "num_kv_heads");
}

TEST(CudaAttentionArgs, RejectsTooSmallWorkspace) {
  expect_rejected(
      [](Call& c) {
        c.meta.max_seq_len = 3 * kPart;
        c.workspace_bytes = kernels::paged_attention_workspace_bytes(c.meta, c.shape) - 1;
      },
      ErrorKind::kRuntime, "workspace");
  expect_rejected(
      [](Call& c) {
        c.meta.max_seq_len = 3 * kPart;
        c.workspace = nullptr;
      },
      ErrorKind::kRuntime, "workspace");
}

}  // namespace
}  // namespace llmcore
