// The values of load_format="dummy" weights: element i of a tensor with stream s is
// (2 u - 1) * bound, u = splitmix64(s, i) as a double in [0, 1): uniform on [-bound, bound), a
// pure function of (s, i), so the CPU and CUDA backends draw the same numbers in parallel.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define LLMCORE_DUMMY_HD __host__ __device__
#else
#define LLMCORE_DUMMY_HD
#endif

namespace llmcore {

LLMCORE_DUMMY_HD inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

LLMCORE_DUMMY_HD inline float dummy_value(uint64_t stream, uint64_t i, float bound) {
  const double u = static_cast<double>(splitmix64(stream ^ splitmix64(i)) >> 11) * 0x1.0p-53;
  return static_cast<float>((2.0 * u - 1.0) * static_cast<double>(bound));
}

}  // namespace llmcore
