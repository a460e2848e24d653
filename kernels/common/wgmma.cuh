// Hopper's warpgroup MMA (wgmma.mma_async, sm_90a): shared-memory descriptors of 128-byte
// swizzled tiles, the m64 instructions the prompt attention kernel uses, their fences and waits,
// and setmaxnreg. The instructions themselves are only emitted where the build targets sm_90a
// (LLMCORE_WGMMA_ARCH); callers keep them behind that. Used by kernels/attention.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/common/tma.cuh"  // smem_u32

// Device code for sm_90a (the architecture-specific features the warpgroup MMA needs).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LLMCORE_WGMMA_ARCH 1
#else
#define LLMCORE_WGMMA_ARCH 0
#endif

namespace llmcore::kernels {

// Shared-memory matrix descriptor of a tile in the 128-byte swizzle layout: start
// address, the leading and stride byte offsets, layout type 1 (128-byte swizzle) in bits 62-63.
// The hardware swizzles absolute address bits, so the tile must start 1024-byte aligned; the
// start may move within an atom (a k-step of a K-major operand). Per the PTX ISA's canonical
// layouts (in 16-byte units T):
//  * K-major (Q, K; rows m, columns k): ((8,m),(T,2k)) : ((8T,SBO),(1,T)): rows 128 bytes apart,
//    SBO to the next 8 rows (1024 bytes in attention's TileShape); the leading offset is unused.
//  * MN-major (V: keys k, head-dim columns n contiguous): ((T,8,m),(8,k)) : ((1,T,LBO),(8T,SBO)):
//    LBO to the next 64 columns (the next 128-byte column block), SBO to the next 8 keys.
__device__ __forceinline__ uint64_t smem_desc_sw128(const void* p, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((smem_u32(p) >> 4) & 0x3fff) |
         (static_cast<uint64_t>((lbo >> 4) & 0x3fff) << 16) |
         (static_cast<uint64_t>((sbo >> 4) & 0x3fff) << 32) | (uint64_t{1} << 62);
}

// setmaxnreg: the calling warpgroup's registers per thread become kRegs (all its warps call it).
template <int kRegs>
__device__ __forceinline__ void warpgroup_regs_dec() {
#if LLMCORE_WGMMA_ARCH
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
#endif
}
template <int kRegs>
__device__ __forceinline__ void warpgroup_regs_inc() {
#if LLMCORE_WGMMA_ARCH
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
#endif
}

__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
// Pins accumulator registers at this point of the program: the warpgroup MMA writes them
// asynchronously, and nothing else may read or move them between its issue and its wait.
template <int N>
__device__ __forceinline__ void pin_registers(float (&r)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int c = 0; c < 4; ++c) asm volatile("" : "+f"(r[i][c])::"memory");
}

// Generic-proxy writes to smem (cp.async, stores) made visible to the warpgroup MMA's reads.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// The instructions by element type (bf16, fp16; f32 accumulators, scale-d on): scores, m64n64k16
// with A from smem (descriptor) or registers and a K-major B; pv, m64n128k16 with A from registers
// and an MN-major (transposed) B.
template <typename T>
struct Wgmma;

// The accumulator operands of n-tile i (4 floats of d[i]).
#define LLMCORE_WGMMA_ACC(d, i) "+f"(d[i][0]), "+f"(d[i][1]), "+f"(d[i][2]), "+f"(d[i][3])
#define LLMCORE_WGMMA_ACC8(d, i0)                                                               \
  LLMCORE_WGMMA_ACC(d, i0), LLMCORE_WGMMA_ACC(d, i0 + 1), LLMCORE_WGMMA_ACC(d, i0 + 2),         \
      LLMCORE_WGMMA_ACC(d, i0 + 3), LLMCORE_WGMMA_ACC(d, i0 + 4), LLMCORE_WGMMA_ACC(d, i0 + 5), \
      LLMCORE_WGMMA_ACC(d, i0 + 6), LLMCORE_WGMMA_ACC(d, i0 + 7)

#define LLMCORE_WGMMA_SS_M64N64K16(TYPE)                                                    \
  __device__ static void scores(float (&d)[8][4], uint64_t desc_a, uint64_t desc_b) {       \
    asm volatile(                                                                           \
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"                                          \
        "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE                         \
        " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "          \
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, " \
        "%32, %33, p, 1, 1, 0, 0;\n}\n"                                                     \
        : LLMCORE_WGMMA_ACC8(d, 0)                                                          \
        : "l"(desc_a), "l"(desc_b));                                                        \
  }

#define LLMCORE_WGMMA_RS_M64N64K16(TYPE)                                                     \
  __device__ static void scores(float (&d)[8][4], const uint32_t (&a)[4], uint64_t desc_b) { \
    asm volatile(                                                                            \
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"                                           \
        "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE                          \
        " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "           \
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "  \
        "{%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"                                        \
        : LLMCORE_WGMMA_ACC8(d, 0)                                                           \
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));                          \
  }

#define LLMCORE_WGMMA_RS_M64N128K16(TYPE)                                                   \
  __device__ static void pv(float (&d)[16][4], const uint32_t (&a)[4], uint64_t desc_b) {   \
    asm volatile(                                                                           \
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"                                          \
        "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE                        \
        " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "          \
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "  \
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "  \
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, " \
        "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"                                       \
        : LLMCORE_WGMMA_ACC8(d, 0), LLMCORE_WGMMA_ACC8(d, 8)                                \
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b));                         \
  }

template <>
struct Wgmma<__nv_bfloat16> {
  LLMCORE_WGMMA_SS_M64N64K16("bf16")
  LLMCORE_WGMMA_RS_M64N64K16("bf16")
  LLMCORE_WGMMA_RS_M64N128K16("bf16")
};
template <>
struct Wgmma<__half> {
  LLMCORE_WGMMA_SS_M64N64K16("f16")
  LLMCORE_WGMMA_RS_M64N64K16("f16")
  LLMCORE_WGMMA_RS_M64N128K16("f16")
};
#undef LLMCORE_WGMMA_SS_M64N64K16
#undef LLMCORE_WGMMA_RS_M64N64K16
#undef LLMCORE_WGMMA_RS_M64N128K16
#undef LLMCORE_WGMMA_ACC8
#undef LLMCORE_WGMMA_ACC

// Until at most N committed groups of this warpgroup's MMAs are in flight.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

}  // namespace llmcore::kernels
