// Thin wrappers over the sm_90a warpgroup matrix instructions (PTX ISA, "Asynchronous Warpgroup
// Level Matrix Multiply-Accumulate Instructions"). A warpgroup is 4 consecutive warps starting
// at a warp index divisible by 4; all 128 threads issue each instruction together.
//
// wgmma.mma_async m64nNk16 computes D (64 x N, fp32) = A (64 x 16) B (16 x N) [+ D]. D stays in
// registers in the m16n8 accumulator layout, warp w of the group holding rows 16w .. 16w + 15
// (see attention_tiles.cuh); A comes from shared memory through a descriptor or from registers
// as four mma.sync-style A fragments; B always comes from shared memory.
//
// Shared-memory operands here use the 128-byte swizzle: a row of 64 two-byte elements fills 128
// bytes, eight rows make a 1024-byte atom (1024-byte aligned), and the 16-byte chunk c of row r
// is stored at chunk c ^ (r % 8). The hardware applies that XOR to the addresses it computes, so
// a descriptor may start anywhere in an atom (a k step of 16 elements is +32 bytes).
//   K-major (the reduction dim contiguous, Q and K for S = Q K^T): rows 128 bytes apart, the
//   stride byte offset (SBO) from one 8-row group to the next is 1024; the leading offset is
//   unused.
//   MN-major (imm-trans-a/b = 1; V for O = P V, whose rows are keys, the reduction dim; in the
//   backward dO, Q, and P and dS read transposed): 8 rows of the reduction dim 128 bytes apart,
//   SBO = 1024 to the next 8, and the leading byte offset (LBO) from one 64-column block of the
//   M or N dim to the next (unused when that dim is 64).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "tensor_core.cuh"

namespace electra_fast {

constexpr int kRowBytes = 128;  // one swizzled row: 64 two-byte elements

// A shared-memory matrix descriptor with the 128-byte swizzle: address, LBO and SBO in bytes
// (each encoded as bits 17..4), base offset 0 (atoms 1024-byte aligned), mode 1 in bits 62-63.
__device__ __forceinline__ uint64_t swizzled_descriptor(uint32_t address, uint32_t leading_bytes,
                                                        uint32_t stride_bytes) {
  const auto encode = [](uint32_t x) { return static_cast<uint64_t>((x & 0x3FFFFu) >> 4); };
  return encode(address) | encode(leading_bytes) << 16 | encode(stride_bytes) << 32 | 1ull << 62;
}

// Rows [0, valid) of a Rows x D tile (D a multiple of 64) from global memory into `tile` in the
// 128-byte swizzle, by a block of Threads threads: 64-column block cb of row r at
// cb * Rows * 128 + r * 128, its 16-byte chunk c at chunk c ^ (r % 8). Rows past `valid` are
// zero-filled, so that masked scores and their products stay finite. Asynchronous: commit,
// then wait.
template <typename T, int D, int Rows, int Threads>
__device__ __forceinline__ void load_swizzled(unsigned char* tile, const T* rows,
                                              int64_t row_stride, int valid,
                                              const T* any_valid_address) {
  constexpr int kChunks = D / 8;
  for (int idx = threadIdx.x; idx < Rows * kChunks; idx += Threads) {
    const int r = idx / kChunks, c = idx % kChunks;
    const bool inside = r < valid;
    const int offset = (c / 8) * Rows * kRowBytes + r * kRowBytes + (((c % 8) ^ (r % 8)) << 4);
    cp_async_16(tile + offset, inside ? rows + r * row_stride + c * 8 : any_valid_address, inside);
  }
}

// Orders this thread's earlier register and shared-memory writes before the warpgroup's next
// wgmma reads them.
__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

// Waits until at most `Pending` committed groups are still running.
template <int Pending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(Pending) : "memory");
}

// Shared memory written by ordinary stores or cp.async and read next by wgmma: each writing
// thread fences before the barrier that publishes the data.
__device__ __forceinline__ void fence_view_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// The top of iteration `tile` of a loop over double-buffered tiles (stage tile % 2), whose first
// tile's loads were committed before the loop: this tile has arrived for every thread and is
// visible to wgmma, every warpgroup is done with the other stage, and the next tile's loads
// into it are under way (load_next(next tile, its stage), committed here).
template <typename LoadNext>
__device__ __forceinline__ void next_double_buffered_tile(int tile, int tiles,
                                                          LoadNext&& load_next) {
  cp_async_wait_all();
  fence_view_async_shared();
  __syncthreads();
  if (tile + 1 < tiles) {
    load_next(tile + 1, (tile + 1) & 1);
    cp_async_commit();
  }
}

// Keeps the compiler from moving accesses of an accumulator across the asynchronous region
// that writes it (between mma_async and wait_group the registers belong to the tensor cores).
template <int Tiles>
__device__ __forceinline__ void fence_accumulators(float (&d)[Tiles][4]) {
#pragma unroll
  for (int i = 0; i < Tiles; ++i) {
#pragma unroll
    for (int c = 0; c < 4; ++c) asm volatile("" : "+f"(d[i][c])::"memory");
  }
}

#define EF_D4(d, i) "+f"(d[i][0]), "+f"(d[i][1]), "+f"(d[i][2]), "+f"(d[i][3])
#define EF_D32(d)                                                                            \
  EF_D4(d, 0), EF_D4(d, 1), EF_D4(d, 2), EF_D4(d, 3), EF_D4(d, 4), EF_D4(d, 5), EF_D4(d, 6), \
      EF_D4(d, 7)
#define EF_D64(d)                                                                              \
  EF_D32(d), EF_D4(d, 8), EF_D4(d, 9), EF_D4(d, 10), EF_D4(d, 11), EF_D4(d, 12), EF_D4(d, 13), \
      EF_D4(d, 14), EF_D4(d, 15)
#define EF_REGS32                                                                               \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define EF_REGS64                                                                               \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "  \
  "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "  \
  "%56, %57, %58, %59, %60, %61, %62, %63}"

// d (64 x N) = A B [+ d]: A 64 x 16 and B 16 x N from shared memory, N = 64 or 128. Each is
// K-major unless its Trans flag says MN-major (for A, the M dim contiguous: a [k][m] tile read
// as its transpose, as the backward reads P^T and dS^T).
template <typename T, int N, int TransA = 0, int TransB = 0>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 8][4], uint64_t a, uint64_t b,
                                         bool accumulate);

// d (64 x N) += A B: A 64 x 16 from registers, B 16 x N MN-major in shared memory. N = 64, 128.
template <typename T, int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t b);

// A, B, ACC, TA, TB: the operand numbers of the descriptors, the accumulate flag and the two
// transpose flags, which follow the N / 2 accumulator registers.
#define EF_WGMMA_SS_DEFINE(TYPE, PTX_TYPE, N, REGS, OUTS, A, B, ACC, TA, TB)                       \
  template <int TransA, int TransB>                                                                \
  struct WgmmaSS<TYPE, N, TransA, TransB> {                                                        \
    __device__ __forceinline__ static void run(float (&d)[N / 8][4], uint64_t a, uint64_t b,       \
                                               bool accumulate) {                                  \
      asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " ACC                                         \
                   ", 0;\n"                                                                        \
                   "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." PTX_TYPE "." PTX_TYPE         \
                   " " REGS ", " A ", " B ", p, 1, 1, " TA ", " TB ";\n}\n"                        \
                   : OUTS(d)                                                                       \
                   : "l"(a), "l"(b), "r"(static_cast<int>(accumulate)), "n"(TransA), "n"(TransB)); \
    }                                                                                              \
  };

// Function templates cannot be partially specialised: the transpose flags go through a struct.
template <typename T, int N, int TransA, int TransB>
struct WgmmaSS;
EF_WGMMA_SS_DEFINE(__nv_bfloat16, "bf16", 64, EF_REGS32, EF_D32, "%32", "%33", "%34", "%35", "%36")
EF_WGMMA_SS_DEFINE(__half, "f16", 64, EF_REGS32, EF_D32, "%32", "%33", "%34", "%35", "%36")
EF_WGMMA_SS_DEFINE(__nv_bfloat16, "bf16", 128, EF_REGS64, EF_D64, "%64", "%65", "%66", "%67", "%68")
EF_WGMMA_SS_DEFINE(__half, "f16", 128, EF_REGS64, EF_D64, "%64", "%65", "%66", "%67", "%68")

template <typename T, int N, int TransA, int TransB>
__device__ __forceinline__ void wgmma_ss(float (&d)[N / 8][4], uint64_t a, uint64_t b,
                                         bool accumulate) {
  WgmmaSS<T, N, TransA, TransB>::run(d, a, b, accumulate);
}

#define EF_WGMMA_DEFINE(TYPE, PTX_TYPE)                                                          \
  template <>                                                                                    \
  __device__ __forceinline__ void wgmma_rs<TYPE, 64>(float (&d)[8][4], const uint32_t (&a)[4],   \
                                                     uint64_t b) {                               \
    asm volatile(                                                                                \
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                             \
        "wgmma.mma_async.sync.aligned.m64n64k16.f32." PTX_TYPE "." PTX_TYPE " " EF_REGS32        \
        ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"                                          \
        : EF_D32(d)                                                                              \
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));                           \
  }                                                                                              \
  template <>                                                                                    \
  __device__ __forceinline__ void wgmma_rs<TYPE, 128>(float (&d)[16][4], const uint32_t (&a)[4], \
                                                      uint64_t b) {                              \
    asm volatile(                                                                                \
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                             \
        "wgmma.mma_async.sync.aligned.m64n128k16.f32." PTX_TYPE "." PTX_TYPE " " EF_REGS64       \
        ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"                                          \
        : EF_D64(d)                                                                              \
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));                           \
  }

EF_WGMMA_DEFINE(__nv_bfloat16, "bf16")
EF_WGMMA_DEFINE(__half, "f16")

#undef EF_WGMMA_DEFINE
#undef EF_WGMMA_SS_DEFINE
#undef EF_REGS64
#undef EF_REGS32
#undef EF_D64
#undef EF_D32
#undef EF_D4

}  // namespace electra_fast
