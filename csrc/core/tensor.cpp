#include "core/tensor.h"

#include <cstdlib>
#include <mutex>
#include <sstream>

namespace llmcore {

namespace {
std::mutex g_alloc_mu;
Allocator g_allocators[2] = {
    Allocator{[](size_t n) { return std::calloc(n == 0 ? 1 : n, 1); }, [](void* p) { std::free(p); }},
    Allocator{},
};
}  // namespace

void register_allocator(Device device, Allocator allocator) {
  std::lock_guard<std::mutex> lock(g_alloc_mu);
  g_allocators[static_cast<int>(device)] = std::move(allocator);
}

std::string shape_str(const Shape& shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;
  return n;
}

Tensor Tensor::empty(Shape shape, DType dtype, Device device) {
  Allocator a;
  {
    std::lock_guard<std::mutex> lock(g_alloc_mu);
    a = g_allocators[static_cast<int>(device)];
  }
  LLMCORE_CHECK(a.alloc, "no allocator registered for device ", device_name(device));
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  void* p = a.alloc(t.nbytes());
  LLMCORE_CHECK(p != nullptr || t.nbytes() == 0, "out of memory allocating ", t.nbytes(),
                " bytes on ", device_name(device));
  t.storage_ = std::shared_ptr<void>(p, a.free);
  t.data_ = p;
  return t;
}

Tensor Tensor::zeros(Shape shape, DType dtype) { return empty(std::move(shape), dtype, Device::kCPU); }

Tensor Tensor::wrap(void* data, Shape shape, DType dtype, Device device, std::shared_ptr<void> keepalive) {
  Tensor t;
  t.data_ = data;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  t.storage_ = std::move(keepalive);
  return t;
}

Tensor Tensor::view(Shape shape) const {
  Tensor t = *this;
  t.shape_ = std::move(shape);
  LLMCORE_CHECK(t.numel() == numel(), "view ", shape_str(t.shape_), " of tensor ", shape_str(shape_));
  return t;
}

Tensor Tensor::narrow_rows(int64_t start, int64_t length) const {
  LLMCORE_CHECK(ndim() >= 1 && start >= 0 && length >= 0 && start + length <= shape_[0],
                "narrow_rows(", start, ", ", length, ") of ", shape_str(shape_));
  Tensor t = *this;
  const int64_t row = shape_[0] == 0 ? 0 : numel() / shape_[0];
  t.shape_[0] = length;
  t.data_ = static_cast<char*>(data_) + static_cast<size_t>(start * row) * dtype_size(dtype_);
  return t;
}

void Tensor::check(const char* what, DType dtype, const Shape& shape) const {
  LLMCORE_CHECK(dtype_ == dtype && shape_ == shape, what, ": expected ", dtype_name(dtype), " ",
                shape_str(shape), ", got ", dtype_name(dtype_), " ", shape_str(shape_));
}

}  // namespace llmcore
