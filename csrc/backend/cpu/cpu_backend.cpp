// CpuBackend: the readable reference implementation of backend.h. Memory ops live here; the
// math is in cpu_elementwise.cpp, cpu_linear.cpp, cpu_attention.cpp and cpu_kv_cache.cpp.
#include <cblas.h>
#include <omp.h>

#include <cstring>

#include "backend/backend.h"
#include "backend/cpu/cpu_ops.h"
#include "core/dummy_values.h"

namespace llmcore {

namespace {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int num_threads)
      : num_threads_(num_threads > 0 ? num_threads : omp_get_num_procs()) {
    // linear() runs one single-threaded sgemm per tile on each of our OpenMP threads. OpenBLAS's
    // own thread pool inside those threads would oversubscribe the cores and would split a tile
    // by thread count, so OpenBLAS is set to one thread. This is process-wide OpenBLAS state;
    // the CPU backend is the only BLAS user in the process.
    openblas_set_num_threads(1);
  }

  Device device() const override { return Device::kCPU; }
  std::string name() const override { return "cpu"; }
  DType activation_dtype() const override { return DType::kF32; }

  Tensor empty(Shape shape, DType dtype) override {
    return Tensor::empty(std::move(shape), dtype, Device::kCPU);
  }

  void copy(Tensor& dst, const Tensor& src) override {
    LLMCORE_CHECK(dst.device() == Device::kCPU && src.device() == Device::kCPU,
                  "the cpu backend copies cpu tensors only, got ", device_name(src.device()),
                  " -> ", device_name(dst.device()));
    LLMCORE_CHECK(dst.dtype() == src.dtype() && dst.numel() == src.numel(),
                  "copy needs the same dtype and element count, got ", dtype_name(src.dtype()), " ",
                  shape_str(src.shape()), " -> ", dtype_name(dst.dtype()), " ",
                  shape_str(dst.shape()));
    if (src.nbytes() > 0 && dst.data() != src.data())
      std::memmove(dst.data(), src.data(), src.nbytes());
  }

  void synchronize() override {}

  void fill_dummy(Tensor& out, uint64_t stream, float bound, const DummyIndex& index) override {
    out.check("fill_dummy out", DType::kF32, out.shape());
    float* data = out.data_as<float>();
    const int64_t n = out.numel();
    const int64_t cols = out.ndim() == 0 || out.dim(0) == 0 ? n : n / out.dim(0);
    const int64_t stride = index.row_stride < 0 ? cols : index.row_stride;
#pragma omp parallel for schedule(static) num_threads(num_threads_)
    for (int64_t i = 0; i < n; ++i) {
      const int64_t src = index.first + (cols ? i / cols * stride + i % cols : 0);
      data[i] = dummy_value(stream, static_cast<uint64_t>(src), bound);
    }
  }

  Tensor load_weight(const Tensor& host) override {
    LLMCORE_CHECK(host.device() == Device::kCPU, "load_weight reads cpu tensors, got ",
                  device_name(host.device()));
    const DType src = host.dtype();
    LLMCORE_CHECK(src == DType::kF32 || src == DType::kF16 || src == DType::kBF16,
                  "load_weight converts float32/float16/bfloat16, got ", dtype_name(src), " ",
                  shape_str(host.shape()));
    Tensor out = Tensor::empty(host.shape(), DType::kF32, Device::kCPU);
    const int64_t n = host.numel();
    float* dst = out.data_as<float>();
    if (src == DType::kF32) {
      const float* in = host.data_as<float>();
#pragma omp parallel for schedule(static) num_threads(num_threads_)
      for (int64_t i = 0; i < n; ++i) dst[i] = in[i];
    } else {
      const uint16_t* in = host.data_as<uint16_t>();
      const bool is_bf16 = src == DType::kBF16;
#pragma omp parallel for schedule(static) num_threads(num_threads_)
      for (int64_t i = 0; i < n; ++i)
        dst[i] = is_bf16 ? bf16_to_float(in[i]) : fp16_to_float(in[i]);
    }
    return out;
  }

  void embedding(Tensor& out, const Tensor& token_ids, const Tensor& table, int64_t vocab_start,
                 int64_t vocab_size) override {
    cpu::embedding(out, token_ids, table, vocab_start, vocab_size, num_threads_);
  }
  void rms_norm(Tensor& out, const Tensor& x, const Tensor& weight, float eps) override {
    cpu::rms_norm(out, x, weight, eps, num_threads_);
  }
  void add_rms_norm(Tensor& x, Tensor& residual, const Tensor& weight, float eps) override {
    cpu::add_rms_norm(x, residual, weight, eps, num_threads_);
  }
  // One kernel for both row kinds: each row's sum runs in the same order whatever its kind.
  void linear(Tensor& out, const Tensor& x, const Tensor& weight, const Tensor* bias,
              const RowKinds* /*kinds*/ = nullptr) override {
    cpu::linear(out, x, weight, bias, num_threads_);
  }
  void rotary_embedding(Tensor& qkv, const Tensor& positions, const Tensor& cos_sin,
                        const AttnShape& shape) override {
    cpu::rotary_embedding(qkv, positions, cos_sin, shape, num_threads_);
  }
  void write_kv_cache(const Tensor& qkv, Tensor& k_cache, Tensor& v_cache,
                      const Tensor& slot_mapping, const AttnShape& shape) override {
    cpu::write_kv_cache(qkv, k_cache, v_cache, slot_mapping, shape, num_threads_);
  }
  void paged_attention(Tensor& out, const Tensor& qkv, const Tensor& k_cache, const Tensor& v_cache,
                       const AttentionMetadata& meta, const AttnShape& shape, float scale,
                       int sliding_window) override {
    cpu::paged_attention(out, qkv, k_cache, v_cache, meta, shape, scale, sliding_window,
                         num_threads_);
  }
  void silu_and_mul(Tensor& out, const Tensor& x) override {
    cpu::silu_and_mul(out, x, num_threads_);
  }
  void gather_rows(Tensor& out, const Tensor& x, const Tensor& indices) override {
    cpu::gather_rows(out, x, indices, num_threads_);
  }
  void copy_kv_blocks(KVCache& cache, const std::vector<std::pair<int, int>>& src_dst) override {
    cpu::copy_kv_blocks(cache, src_dst, num_threads_);
  }

 private:
  const int num_threads_;
};

}  // namespace

std::unique_ptr<Backend> create_cpu_backend(int num_threads) {
  LLMCORE_CHECK_ARG(num_threads >= 0, "num_threads must be >= 0 (0 = all cores), got ",
                    num_threads);
  return std::make_unique<CpuBackend>(num_threads);
}

}  // namespace llmcore
