// The pieces the mma.sync (sm80) attention kernels share, forward (attention.cu) and backward
// (attention_backward.cu): the tile shape, tile loads and the two strip products.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>

#include "../attention.h"
#include "attention_tiles.cuh"
#include "tensor_core.cuh"

namespace electra_fast {
namespace {

constexpr int kTile = kAttentionTile;
constexpr int kThreads = 128;  // 4 warps, 16 rows of the tile each

constexpr int kScorePitch = kTile + 8;

// Rows [0, valid) of a 64-row tile from global memory (rows `row_stride` apart) into shared
// memory, rows past `valid` as zeros, by kLoaders threads of which this is number `thread`.
// Asynchronous: cp_async_commit, then cp_async_wait_all.
template <typename T, int D, int kLoaders = kThreads>
__device__ __forceinline__ void load_tile(T* tile, const T* rows, int64_t row_stride, int valid,
                                          const T* any_valid_address, int thread) {
  using S = Shape<D>;
  for (int idx = thread; idx < kTile * S::kChunks; idx += kLoaders) {
    const int r = idx / S::kChunks, c = idx % S::kChunks;
    const bool inside = r < valid;
    cp_async_16(tile + r * S::kPitch + c * 8,
                inside ? rows + r * row_stride + c * 8 : any_valid_address, inside);
  }
}

// acc[8][4] += rows [16w, 16w + 16) of A (64 x D, in shared memory) times B^T, B (64 x D) also in
// shared memory: a 16 x 64 strip of QK^T or dO V^T.
template <typename T, int D>
__device__ __forceinline__ void strip_times_transposed(float (&acc)[8][4], const T* a_tile,
                                                       const T* b_tile, int warp, int lane) {
  using S = Shape<D>;
#pragma unroll
  for (int kk = 0; kk < S::kKSteps; ++kk) {
    uint32_t a[4];
    ldmatrix_x4(a, a_tile + (warp * 16 + lane % 16) * S::kPitch + kk * 16 + (lane / 16) * 8);
#pragma unroll
    for (int np = 0; np < 4; ++np) {
      // Matrices: (keys +0, d +0), (keys +0, d +8), (keys +8, d +0), (keys +8, d +8).
      uint32_t b[4];
      ldmatrix_x4(b, b_tile + (np * 16 + lane % 8 + (lane / 16) * 8) * S::kPitch + kk * 16 +
                         ((lane / 8) % 2) * 8);
      mma_16816<T>(acc[2 * np], a, b[0], b[1]);
      mma_16816<T>(acc[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// out[kDTiles][4] += a (16 x 16 A fragment over rows k0 .. k0 + 15 of B) times B (rows x D in
// shared memory, row-major): the fragments of B come transposed out of ldmatrix.
template <typename T, int D>
__device__ __forceinline__ void a_times_tile(float (&out)[Shape<D>::kDTiles][4],
                                             const uint32_t (&a)[4], const T* b_tile, int k0,
                                             int lane) {
  using S = Shape<D>;
#pragma unroll
  for (int dp = 0; dp < S::kKSteps; ++dp) {
    // Matrices: (rows +0, d +0), (rows +8, d +0), (rows +0, d +8), (rows +8, d +8).
    uint32_t b[4];
    ldmatrix_x4_trans(
        b, b_tile + (k0 + lane % 8 + ((lane / 8) % 2) * 8) * S::kPitch + dp * 16 + (lane / 16) * 8);
    mma_16816<T>(out[2 * dp], a, b[0], b[1]);
    mma_16816<T>(out[2 * dp + 1], a, b[2], b[3]);
  }
}

// The kernels use sm80's mma.sync and cp.async.
inline void check_device(const at::Tensor& q) {
  int major = 0;
  C10_CUDA_CHECK(
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, q.device().index()));
  TORCH_CHECK_VALUE(major >= 8,
                    "the CUDA attention kernels need compute capability 8.0 or "
                    "newer, got ",
                    major, ".x");
}

}  // namespace
}  // namespace electra_fast
