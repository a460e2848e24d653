// CudaBackend: memory ops and the op table. The math lives in kernels/ (launchers in
// kernels/kernels.h) and, for linear, in cuda_linear.cpp.
#include "backend/cuda/cuda_backend.h"

#include <algorithm>
#include <cstring>
#include <thread>

#include "backend/cuda/cuda_allocator.h"
#include "backend/cuda/cuda_linear.h"
#include "kernels/common/cuda_check.h"
#include "kernels/kernels.h"

namespace llmcore {

namespace {

// dst[i] = convert(src[i]) for i in [0, n), split over threads for large tensors.
template <typename Fn>
void parallel_for(int64_t n, Fn fn) {
  constexpr int64_t kSerialBelow = int64_t{1} << 20;
  const int64_t hw = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t num_threads = n < kSerialBelow ? 1 : std::min<int64_t>(hw, 16);
  if (num_threads == 1) {
    fn(0, n);
    return;
  }
  std::vector<std::thread> threads;
  const int64_t chunk = (n + num_threads - 1) / num_threads;
  for (int64_t t = 0; t < num_threads; ++t) {
    const int64_t begin = t * chunk, end = std::min(n, begin + chunk);
    if (begin < end) threads.emplace_back(fn, begin, end);
  }
  for (std::thread& th : threads) th.join();
}

// Host float32/float16/bfloat16 [n] -> host bfloat16 or float16 bits [n].
std::vector<uint16_t> convert_to_half(const Tensor& host, DType to) {
  const int64_t n = host.numel();
  std::vector<uint16_t> out(static_cast<size_t>(n));
  const DType from = host.dtype();
  const bool to_bf16 = to == DType::kBF16;
  parallel_for(n, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float f;
      if (from == DType::kF32) {
        f = host.data_as<float>()[i];
      } else if (from == DType::kBF16) {
        f = bf16_to_float(host.data_as<uint16_t>()[i]);
      } else {
        f = fp16_to_float(host.data_as<uint16_t>()[i]);
      }
      out[static_cast<size_t>(i)] = to_bf16 ? float_to_bf16(f) : float_to_fp16(f);
    }
  });
  return out;
}

}  // namespace

CudaBackend::CudaBackend(int device_index, DType activation_dtype)
    : device_(device_index), activation_dtype_(activation_dtype) {
  cuda::register_cuda_allocator();
  cuda::DeviceGuard guard(device_);
  try {
    // A blocking stream: ordered against legacy-default-stream work (see cuda_allocator.h).
    LLMCORE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamDefault));
    LLMCORE_CUDA_CHECK(cudaMalloc(&error_word_, sizeof(int)));
    LLMCORE_CUDA_CHECK(cudaMemsetAsync(error_word_, 0, sizeof(int), stream_));
    LLMCORE_CUDA_CHECK(cudaMallocHost(&host_error_word_, sizeof(int)));
    *host_error_word_ = 0;
    LLMCORE_CUDA_CHECK(cudaEventCreateWithFlags(&upload_done_, cudaEventDisableTiming));
    linear_ = std::make_unique<cuda::CublasLtLinear>(device_, stream_);
    LLMCORE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  } catch (...) {
    linear_.reset();
    if (upload_done_ != nullptr) cudaEventDestroy(upload_done_);
    if (host_error_word_ != nullptr) cudaFreeHost(host_error_word_);
    if (error_word_ != nullptr) cudaFree(error_word_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    throw;
  }
}

CudaBackend::~CudaBackend() {
  // A destructor must not throw: errors here are dropped, the memory goes back with the process.
  cuda::DeviceGuard guard(device_);
  cudaStreamSynchronize(stream_);
  linear_.reset();
  try {
    cuda::CachingAllocator::instance().retire_stream(device_, stream_);
  } catch (const std::exception&) {
  }
  if (upload_staging_ != nullptr) cudaFreeHost(upload_staging_);
  cudaEventDestroy(upload_done_);
  cudaFreeHost(host_error_word_);
  cudaFree(error_word_);
  cudaStreamDestroy(stream_);
}

std::string CudaBackend::name() const { return str_cat("cuda:", device_); }

Tensor CudaBackend::empty(Shape shape, DType dtype) {
  return cuda::empty_on_stream(std::move(shape), dtype, device_, stream_);
}

void CudaBackend::copy(Tensor& dst, const Tensor& src) {
  LLMCORE_CHECK(dst.dtype() == src.dtype() && dst.numel() == src.numel(),
                "copy needs the same dtype and element count, got ", dtype_name(src.dtype()), " ",
                shape_str(src.shape()), " -> ", dtype_name(dst.dtype()), " ",
                shape_str(dst.shape()));
  const size_t nbytes = src.nbytes();
  if (nbytes == 0 || dst.data() == src.data()) return;
  const bool from_gpu = src.device() == Device::kCUDA, to_gpu = dst.device() == Device::kCUDA;
  if (!from_gpu && !to_gpu) {
    std::memmove(dst.data(), src.data(), nbytes);
    return;
  }
  cuda::DeviceGuard guard(device_);
  if (from_gpu && to_gpu) {
    // cudaMemcpyDefault: unified addressing also covers a source on another GPU.
    LLMCORE_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), nbytes, cudaMemcpyDefault, stream_));
  } else if (to_gpu) {
    LLMCORE_CUDA_CHECK(
        cudaMemcpyAsync(dst.data(), src.data(), nbytes, cudaMemcpyHostToDevice, stream_));
    cudaPointerAttributes attr{};
    LLMCORE_CUDA_CHECK(cudaPointerGetAttributes(&attr, src.data()));
    // Pinned memory is read by the DMA engine later; wait so the caller may reuse it at once.
    if (attr.type == cudaMemoryTypeHost) LLMCORE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  } else {
    LLMCORE_CUDA_CHECK(
        cudaMemcpyAsync(dst.data(), src.data(), nbytes, cudaMemcpyDeviceToHost, stream_));
    sync_and_check();
  }
}

Tensor CudaBackend::upload(const Tensor& host) {
  LLMCORE_CHECK(host.device() == Device::kCPU, "upload needs a host tensor, got one on ",
                device_name(host.device()));
  Tensor d = empty(host.shape(), host.dtype());
  const size_t nbytes = host.nbytes();
  if (nbytes == 0) return d;
  cuda::DeviceGuard guard(device_);
  // The previous upload's DMA may still read the staging (it is done by the time a step's sampler
  // has synchronized, so this rarely waits).
  LLMCORE_CUDA_CHECK(cudaEventSynchronize(upload_done_));
  if (nbytes > upload_capacity_) {
    size_t capacity = std::max<size_t>(upload_capacity_, 64 << 10);
    while (capacity < nbytes) capacity *= 2;
    void* staging = nullptr;
    LLMCORE_CUDA_CHECK(cudaMallocHost(&staging, capacity));
    if (upload_staging_ != nullptr) cudaFreeHost(upload_staging_);
    upload_staging_ = staging;
    upload_capacity_ = capacity;
  }
  std::memcpy(upload_staging_, host.data(), nbytes);
  LLMCORE_CUDA_CHECK(
      cudaMemcpyAsync(d.data(), upload_staging_, nbytes, cudaMemcpyHostToDevice, stream_));
  LLMCORE_CUDA_CHECK(cudaEventRecord(upload_done_, stream_));
  return d;
}

void CudaBackend::synchronize() {
  cuda::DeviceGuard guard(device_);
  sync_and_check();
}

void CudaBackend::sync_and_check() {
  LLMCORE_CUDA_CHECK(
      cudaMemcpyAsync(host_error_word_, error_word_, sizeof(int), cudaMemcpyDeviceToHost, stream_));
  LLMCORE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  const int bits = *host_error_word_;
  if (bits == 0) return;
  *host_error_word_ = 0;
  LLMCORE_CUDA_CHECK(cudaMemsetAsync(error_word_, 0, sizeof(int), stream_));
  LLMCORE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  std::string what;
  for (int i = 0; i < 31; ++i)
    if (bits & (1 << i))
      what += str_cat(what.empty() ? "" : "; ", kernels::kernel_error_name(1 << i));
  throw_runtime_error("cuda backend: a kernel met bad indices since the last synchronization (",
                      what, "); the affected outputs hold NaN");
}

Tensor CudaBackend::load_weight(const Tensor& host) {
  LLMCORE_CHECK(host.device() == Device::kCPU, "load_weight reads cpu tensors, got ",
                device_name(host.device()));
  const DType src = host.dtype();
  LLMCORE_CHECK(src == DType::kF32 || src == DType::kF16 || src == DType::kBF16,
                "load_weight converts float32/float16/bfloat16, got ", dtype_name(src), " ",
                shape_str(host.shape()));
  Tensor out = empty(host.shape(), activation_dtype_);
  if (src == activation_dtype_) {
    copy(out, host);
    return out;
  }
  std::vector<uint16_t> converted = convert_to_half(host, activation_dtype_);
  const Tensor staged = Tensor::wrap(converted.data(), host.shape(), activation_dtype_);
  copy(out, staged);  // pageable source: staged by the driver before copy() returns
  return out;
}

void CudaBackend::embedding(Tensor& out, const Tensor& token_ids, const Tensor& table, int64_t vocab_start,
                            int64_t vocab_size) {
  cuda::DeviceGuard guard(device_);
  kernels::embedding(out, token_ids, table, vocab_start, vocab_size, error_word_, stream_);
}

void CudaBackend::rms_norm(Tensor& out, const Tensor& x, const Tensor& weight, float eps) {
  cuda::DeviceGuard guard(device_);
  kernels::rms_norm(out, x, weight, eps, stream_);
}

void CudaBackend::add_rms_norm(Tensor& x, Tensor& residual, const Tensor& weight, float eps) {
  cuda::DeviceGuard guard(device_);
  kernels::add_rms_norm(x, residual, weight, eps, stream_);
}

namespace {

// Walks x's rows by kind: prompt(begin, end) for each run of prompt rows between the generated
// ranges, generated(begin, end) for each generated range, in row order. x_rows is the row count.
template <typename PromptFn, typename GeneratedFn>
void for_each_row_kind(const RowKinds& kinds, int64_t x_rows, PromptFn prompt, GeneratedFn generated) {
  int64_t done = 0;
  for (const auto& [begin, end] : kinds.generated) {
    LLMCORE_CHECK(begin >= done && begin < end && end <= x_rows, "linear: generated rows [", begin, ", ", end,
                  ") are not sorted, disjoint ranges inside [0, ", x_rows, ")");
    if (begin > done) prompt(done, begin);
    generated(begin, end);
    done = end;
  }
  if (x_rows > done) prompt(done, x_rows);
}

}  // namespace

// Whether the decode GEMM takes x's generated rows: it is on, any there are, and it takes the weight (its
// dtype, K and alignment only; x is staged when its base is misaligned, so that cannot change the
// kernel either). Then x_use is x, or its aligned copy in x_staged.
bool CudaBackend::decode_gemm_rows(const Tensor& x, const Tensor& weight, const RowKinds* kinds, Tensor& x_staged,
                                   const Tensor*& x_use) {
  if (!decode_gemm_ || kinds == nullptr || kinds->generated.empty() || x.ndim() != 2 || x.dim(0) == 0 ||
      !kernels::skinny_gemm_supports(weight))
    return false;
  x_use = &x;
  if (reinterpret_cast<uintptr_t>(x.data()) % 16 != 0) {
    x_staged = cuda::aligned_copy(x, device_, stream_);
    x_use = &x_staged;
  }
  return true;
}

void CudaBackend::linear(Tensor& out, const Tensor& x, const Tensor& weight, const Tensor* bias,
                         const RowKinds* kinds) {
  cuda::DeviceGuard guard(device_);
  if (kinds == nullptr || x.ndim() != 2) {
    linear_->run(out, x, weight, bias);
    return;
  }
  Tensor x_staged;
  const Tensor* x_use = &x;
  const bool decode_gemm = decode_gemm_rows(x, weight, kinds, x_staged, x_use);
  // Row slices by kind: prompt rows to cuBLASLt's prompt plan, generated ranges to the decode GEMM
  // or cuBLASLt's generated-row plan (each checks the operands, the bias included).
  for_each_row_kind(
      *kinds, x.dim(0),
      [&](int64_t begin, int64_t end) {
        Tensor o = out.narrow_rows(begin, end - begin);
        linear_->run(o, x_use->narrow_rows(begin, end - begin), weight, bias, cuda::GemmRole::kPrompt);
      },
      [&](int64_t begin, int64_t end) {
        Tensor o = out.narrow_rows(begin, end - begin);
        if (decode_gemm) {
          kernels::skinny_gemm(o, x_use->narrow_rows(begin, end - begin), weight, bias, stream_);
        } else {
          linear_->run(o, x_use->narrow_rows(begin, end - begin), weight, bias, cuda::GemmRole::kGenerated);
        }
      });
}

void CudaBackend::linear_silu_and_mul(Tensor& out, Tensor& gate_up, const Tensor& x, const Tensor& weight,
                                      const Tensor* bias, const RowKinds* kinds) {
  cuda::DeviceGuard guard(device_);
  Tensor x_staged;
  const Tensor* x_use = nullptr;
  if (!decode_gemm_rows(x, weight, kinds, x_staged, x_use) || weight.dim(0) % 2 != 0) {
    Backend::linear_silu_and_mul(out, gate_up, x, weight, bias, kinds);
    return;
  }
  // Prompt rows: cuBLASLt into their gate_up rows, then silu_and_mul on them; generated rows: the
  // decode GEMM with the gate fused, the same bits as its plain form followed by silu_and_mul, so
  // the choice may follow the row count: fused up to kFusedSiluMaxRows rows (H100, gate_up of the 8B
  // shape at M = 1: 0.0838 ms against 0.0885 for the two kernels; even at 16, slower past that).
  constexpr int64_t kFusedSiluMaxRows = 8;
  for_each_row_kind(
      *kinds, x.dim(0),
      [&](int64_t begin, int64_t end) {
        Tensor gu = gate_up.narrow_rows(begin, end - begin);
        linear_->run(gu, x_use->narrow_rows(begin, end - begin), weight, bias, cuda::GemmRole::kPrompt);
        Tensor o = out.narrow_rows(begin, end - begin);
        kernels::silu_and_mul(o, gu, stream_);
      },
      [&](int64_t begin, int64_t end) {
        Tensor o = out.narrow_rows(begin, end - begin);
        if (end - begin <= kFusedSiluMaxRows) {
          kernels::skinny_gemm_silu_and_mul(o, x_use->narrow_rows(begin, end - begin), weight, bias, stream_);
          return;
        }
        Tensor gu = gate_up.narrow_rows(begin, end - begin);
        kernels::skinny_gemm(gu, x_use->narrow_rows(begin, end - begin), weight, bias, stream_);
        kernels::silu_and_mul(o, gu, stream_);
      });
}

void CudaBackend::rotary_embedding(Tensor& qkv, const Tensor& positions, const Tensor& cos_sin,
                                   const AttnShape& shape) {
  cuda::DeviceGuard guard(device_);
  kernels::rotary_embedding(qkv, positions, cos_sin, shape, error_word_, stream_);
}

void CudaBackend::rotary_embedding_and_write_kv(Tensor& qkv, const Tensor& positions, const Tensor& cos_sin,
                                                Tensor& k_cache, Tensor& v_cache, const Tensor& slot_mapping,
                                                const AttnShape& shape) {
  cuda::DeviceGuard guard(device_);
  kernels::rotary_embedding_and_write_kv(qkv, positions, cos_sin, k_cache, v_cache, slot_mapping, shape, error_word_,
                                         stream_);
}

void CudaBackend::write_kv_cache(const Tensor& qkv, Tensor& k_cache, Tensor& v_cache,
                                 const Tensor& slot_mapping, const AttnShape& shape) {
  cuda::DeviceGuard guard(device_);
  kernels::write_kv_cache(qkv, k_cache, v_cache, slot_mapping, shape, error_word_, stream_);
}

void CudaBackend::paged_attention(Tensor& out, const Tensor& qkv, const Tensor& k_cache,
                                  const Tensor& v_cache, const AttentionMetadata& meta,
                                  const AttnShape& shape, float scale, int sliding_window) {
  LLMCORE_CHECK(sliding_window >= 0, "sliding_window must be >= 0, got ", sliding_window);
  cuda::DeviceGuard guard(device_);
  // Scratch for split-K partial results, from the caching allocator (freed, for reuse, on return;
  // the stream orders that reuse after this launch).
  const size_t workspace_bytes = kernels::paged_attention_workspace_bytes(meta, shape);
  Tensor workspace;
  if (workspace_bytes > 0) workspace = empty({static_cast<int64_t>(workspace_bytes)}, DType::kU8);
  kernels::paged_attention(out, qkv, k_cache, v_cache, meta, shape, scale, sliding_window,
                           workspace.data(), workspace_bytes, stream_);
}

void CudaBackend::silu_and_mul(Tensor& out, const Tensor& x) {
  cuda::DeviceGuard guard(device_);
  kernels::silu_and_mul(out, x, stream_);
}

void CudaBackend::gather_rows(Tensor& out, const Tensor& x, const Tensor& indices) {
  cuda::DeviceGuard guard(device_);
  kernels::gather_rows(out, x, indices, error_word_, stream_);
}

void CudaBackend::fill_dummy(Tensor& out, uint64_t stream, float bound, const DummyIndex& index) {
  cuda::DeviceGuard guard(device_);
  kernels::fill_dummy(out, stream, bound, index.first, index.row_stride, stream_);
}

void CudaBackend::copy_kv_blocks(KVCache& cache, const std::vector<std::pair<int, int>>& src_dst) {
  std::vector<Tensor*> layers = kv_copy_layers(cache, src_dst, Device::kCUDA);
  if (src_dst.empty() || layers.empty()) return;
  cuda::DeviceGuard guard(device_);
  kernels::copy_kv_blocks(layers, src_dst, stream_);
}

cuda::MemoryInfo CudaBackend::memory_info() const { return cuda::memory_info(device_); }

cuda::AllocatorStats CudaBackend::memory_stats() const {
  return cuda::CachingAllocator::instance().stats(device_);
}

void CudaBackend::reset_peak_memory_stats() {
  cuda::CachingAllocator::instance().reset_peak(device_);
}

size_t CudaBackend::release_cached_memory() {
  cuda::DeviceGuard guard(device_);
  LLMCORE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  return cuda::CachingAllocator::instance().release_cached(device_);
}

size_t CudaBackend::num_linear_plans() const { return linear_->num_plans(); }

std::unique_ptr<Backend> create_cuda_backend(int device_index, DType activation_dtype) {
  LLMCORE_CHECK_ARG(activation_dtype == DType::kBF16 || activation_dtype == DType::kF16,
                    "the cuda backend's activation dtype must be bfloat16 or float16, got ",
                    dtype_name(activation_dtype));
  const int num_devices = cuda::device_count();
  LLMCORE_CHECK_ARG(device_index >= 0 && device_index < num_devices, "device_index must be in [0, ",
                    num_devices, ") (the visible CUDA devices), got ", device_index);
  return std::make_unique<CudaBackend>(device_index, activation_dtype);
}

}  // namespace llmcore
