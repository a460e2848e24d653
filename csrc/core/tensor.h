// Tensor: a typed, shaped, contiguous (row-major) view of memory on one device, optionally owning
// it. Ops take Tensors and read the shape; they never allocate behind the caller's back.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace llmcore {

enum class Device : uint8_t { kCPU, kCUDA };

inline const char* device_name(Device d) { return d == Device::kCPU ? "cpu" : "cuda"; }

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& shape);

// Allocation on a device. CPU is built in; the CUDA backend registers its allocator at start.
struct Allocator {
  std::function<void*(size_t nbytes)> alloc;
  std::function<void(void*)> free;
};
void register_allocator(Device device, Allocator allocator);

class Tensor {
 public:
  Tensor() = default;

  // New owning tensor; CPU memory is zero-filled lazily by the OS (calloc), other devices are
  // uninitialized.
  static Tensor empty(Shape shape, DType dtype, Device device = Device::kCPU);
  static Tensor zeros(Shape shape, DType dtype);  // CPU
  // Non-owning view of `data`; `keepalive` (may be null) keeps the backing storage alive.
  static Tensor wrap(void* data, Shape shape, DType dtype, Device device = Device::kCPU,
                     std::shared_ptr<void> keepalive = nullptr);

  bool defined() const { return data_ != nullptr || !shape_.empty(); }
  void* data() const { return data_; }
  template <typename T>
  T* data_as() const { return static_cast<T*>(data_); }

  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const { return shape_.at(i < 0 ? i + ndim() : i); }
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }

  // Same memory, new shape with the same number of elements.
  Tensor view(Shape shape) const;
  // Rows [start, start + length) along dim 0 (contiguous, so still a plain view).
  Tensor narrow_rows(int64_t start, int64_t length) const;

  // Throws RuntimeError naming `what` unless dtype and shape match.
  void check(const char* what, DType dtype, const Shape& shape) const;

 private:
  void* data_ = nullptr;
  Shape shape_;
  DType dtype_ = DType::kF32;
  Device device_ = Device::kCPU;
  std::shared_ptr<void> storage_;
};

}  // namespace llmcore
