// CudaBackend: backend.h on one GPU. Ops enqueue kernels (kernels/) and cuBLASLt GEMMs on the
// backend's own stream and return at once; copy() to the host and synchronize() wait for them.
//
// Errors a kernel finds in device-resident indices (a token id, position, slot or row index out
// of range) cannot be thrown where the op is called without a sync. Kernels skip the bad index,
// write NaN where the output would go, and set a bit in a device error word; the next
// synchronize() or device-to-host copy throws a RuntimeError naming the op.
//
// Memory comes from the caching allocator (cuda_allocator.h) for this backend's stream.
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cuda_allocator.h"
#include "backend/cuda/cuda_device.h"

namespace llmcore {

namespace cuda {
class CublasLtLinear;
}

class CudaBackend final : public Backend {
 public:
  // Makes `device_index` current for construction only; every op sets it again for its duration,
  // so one thread may drive backends on several GPUs.
  CudaBackend(int device_index, DType activation_dtype);
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  Device device() const override { return Device::kCUDA; }
  std::string name() const override;
  DType activation_dtype() const override { return activation_dtype_; }

  Tensor empty(Shape shape, DType dtype) override;
  // Host -> device copies are staged by the driver before copy() returns when the source is
  // pageable (ordinary) memory; from pinned host memory the stream is synchronized before
  // returning, so the source may be reused either way. Device -> host copies synchronize.
  void copy(Tensor& dst, const Tensor& src) override;
  // One asynchronous DMA from a pinned staging buffer (grown as needed), instead of the driver's
  // staging of pageable memory, which waits for the stream and copies in pieces: a step's inputs
  // go up without the host waiting. The staging is rewritten only after the previous upload's copy
  // has completed (an event).
  Tensor upload(const Tensor& host) override;
  void synchronize() override;
  Tensor load_weight(const Tensor& host) override;

  void embedding(Tensor& out, const Tensor& token_ids, const Tensor& table, int64_t vocab_start,
                 int64_t vocab_size) override;
  void rms_norm(Tensor& out, const Tensor& x, const Tensor& weight, float eps) override;
  void add_rms_norm(Tensor& x, Tensor& residual, const Tensor& weight, float eps) override;
  // With kinds: prompt rows through cuBLASLt's prompt plan (cuda_linear.cpp, GemmRole), generated
  // rows through the decode GEMM (kernels/linear/skinny_gemm.cu) when it is on and takes the weight,
  // else through cuBLASLt's generated-row plan. Without kinds: all rows through one cuBLASLt plan.
  // Either way a row's bits depend only on the row, its kind and the weight.
  void linear(Tensor& out, const Tensor& x, const Tensor& weight, const Tensor* bias,
              const RowKinds* kinds = nullptr) override;
  void rotary_embedding(Tensor& qkv, const Tensor& positions, const Tensor& cos_sin,
                        const AttnShape& shape) override;
  void rotary_embedding_and_write_kv(Tensor& qkv, const Tensor& positions, const Tensor& cos_sin, Tensor& k_cache,
                                     Tensor& v_cache, const Tensor& slot_mapping, const AttnShape& shape) override;
  void write_kv_cache(const Tensor& qkv, Tensor& k_cache, Tensor& v_cache,
                      const Tensor& slot_mapping, const AttnShape& shape) override;
  void paged_attention(Tensor& out, const Tensor& qkv, const Tensor& k_cache, const Tensor& v_cache,
                       const AttentionMetadata& meta, const AttnShape& shape, float scale,
                       int sliding_window) override;
  void silu_and_mul(Tensor& out, const Tensor& x) override;
  void linear_silu_and_mul(Tensor& out, Tensor& gate_up, const Tensor& x, const Tensor& weight, const Tensor* bias,
                           const RowKinds* kinds) override;
  void gather_rows(Tensor& out, const Tensor& x, const Tensor& indices) override;
  void copy_kv_blocks(KVCache& cache, const std::vector<std::pair<int, int>>& src_dst) override;
  void fill_dummy(Tensor& out, uint64_t stream, float bound, const DummyIndex& index) override;

  // --- CUDA-specific -----------------------------------------------------------------------------
  int device_index() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  // This GPU's free and total memory (cudaMemGetInfo).
  cuda::MemoryInfo memory_info() const;
  // The caching allocator's numbers for this GPU (all streams on it).
  cuda::AllocatorStats memory_stats() const;
  void reset_peak_memory_stats();
  // Synchronizes, then returns this GPU's cached free blocks to CUDA; returns the bytes released.
  size_t release_cached_memory();
  // cuBLASLt GEMM plans chosen so far (one per weight shape, output dtype and role; cuda_linear.cpp).
  size_t num_linear_plans() const;
  // Whether generated rows may take the decode GEMM (on by default): an engine that runs more
  // sequences than it is fast for turns it off, and its generated rows take cuBLASLt's
  // generated-row plan. Set before the first linear() and never changed after.
  void set_decode_gemm(bool on) { decode_gemm_ = on; }

 private:
  // Whether linear's generated rows of x go to the decode GEMM; x_use: x or its aligned copy.
  bool decode_gemm_rows(const Tensor& x, const Tensor& weight, const RowKinds* kinds, Tensor& x_staged,
                        const Tensor*& x_use);

  // Waits for the stream, then throws if a kernel reported bad indices since the last check.
  void sync_and_check();

  const int device_;
  const DType activation_dtype_;
  bool decode_gemm_ = true;
  cudaStream_t stream_ = nullptr;
  int* error_word_ = nullptr;       // device int: KernelError bits (kernels/kernels.h)
  int* host_error_word_ = nullptr;  // pinned host int the error word is copied into
  void* upload_staging_ = nullptr;   // pinned host bytes of upload()
  size_t upload_capacity_ = 0;
  cudaEvent_t upload_done_ = nullptr;  // recorded after upload()'s copy
  std::unique_ptr<cuda::CublasLtLinear> linear_;
};

// The CUDA backend on GPU `device_index` with bfloat16 or float16 activations. Throws ValueError
// for a device index outside the visible GPUs or another dtype.
std::unique_ptr<Backend> create_cuda_backend(int device_index, DType activation_dtype);

}  // namespace llmcore
