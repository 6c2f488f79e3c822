// The pieces both CUDA attention forwards share (the mma.sync kernels of attention.cu and the
// wgmma forward of attention_sm90.cu): the online softmax over a strip of scores held in
// m16n8 accumulator layout, the dropout decisions of such a strip, the conversion of
// accumulators into A fragments, and the staged store of result rows.
//
// Accumulator layout (mma.sync m16n8 tiles, and each warp's 16 rows of a wgmma m64nN result,
// which is the same): lane 4g + t holds elements c = 0, 1 of row g and c = 2, 3 of row g + 8, at
// columns 8 * tile + 2t + c % 2. So a row's values are spread over the quad of lanes 4g .. 4g + 3.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>

#include <cstdint>

#include "../attention.h"
#include "tensor_core.cuh"

namespace electra_fast {

constexpr float kLn2 = 0.6931471805599453f;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kInf = __builtin_huge_valf();

template <int D>
struct Shape {
  static constexpr int kPitch = D + 8;    // 16 extra bytes per row: ldmatrix without conflicts
  static constexpr int kChunks = D / 8;   // 16-byte pieces of a row
  static constexpr int kKSteps = D / 16;  // k steps of a matmul over D
  static constexpr int kDTiles = D / 8;   // 8-column accumulator tiles over D
};

// This thread's dropout decisions in a 16 x 64 strip of (query, key): bit nt * 4 + c is
// accumulator element c of 8-column tile nt, that is row g + 8 * (c / 2), column
// nt * 8 + 2t + c % 2. `query` is row g's position in the sequence, `key0` the strip's first key.
// The quad of row g shares the 16 Philox calls of its two rows: each thread makes 4 and four
// shuffle rounds hand every thread its word of each (round s: lane t sends word t - s of its
// call and receives word t of the call of lane t + s).
__device__ __forceinline__ uint32_t dropout_keep_bits(uint64_t seed, int64_t bh, int query,
                                                      int key0, uint32_t threshold, int lane) {
  const int t = lane & 3;
  uint32_t bits = 0;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
#pragma unroll
    for (int a = 0; a < 2; ++a) {
      const Philox4 block = dropout_block(seed, bh, query + 8 * r, key0 / 8 + 4 * a + t);
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        const uint32_t sent = philox_word(block, static_cast<uint32_t>(t - s) & 3u);
        const int source = (t + s) & 3;
        const uint32_t word = __shfl_sync(0xffffffffu, sent, (lane & ~3) | source);
        const int shift = (4 * a + source) * 4 + 2 * r;
        bits |= static_cast<uint32_t>((word & 0xffffu) >= threshold) << shift;
        bits |= static_cast<uint32_t>((word >> 16) >= threshold) << (shift + 1);
      }
    }
  }
  return bits;
}

// Zeroes the dropped probabilities of a strip of Tiles 8-column tiles starting at key `key0`:
// one dropout_keep_bits word per 64 keys.
template <int Tiles>
__device__ __forceinline__ void drop_probabilities(float (&s)[Tiles][4], const AttentionParams& p,
                                                   uint64_t seed, int64_t bh, int query, int key0,
                                                   int lane) {
  static_assert(Tiles % 8 == 0, "dropout words cover 64 keys");
#pragma unroll
  for (int w = 0; w < Tiles / 8; ++w) {
    const uint32_t keep = dropout_keep_bits(seed, bh, query, key0 + 64 * w, p.drop_threshold, lane);
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        float& x = s[8 * w + nt][c];
        x = (keep >> (nt * 4 + c)) & 1u ? x : 0.0f;
      }
    }
  }
}

// A fragments (k steps of 16 columns) of the strip held in accumulators acc[Tiles][4].
template <typename T, int Tiles>
__device__ __forceinline__ void accumulators_to_a(const float (&acc)[Tiles][4],
                                                  uint32_t (&a)[Tiles / 2][4]) {
#pragma unroll
  for (int kk = 0; kk < Tiles / 2; ++kk) {
    a[kk][0] = pack2<T>(acc[2 * kk][0], acc[2 * kk][1]);
    a[kk][1] = pack2<T>(acc[2 * kk][2], acc[2 * kk][3]);
    a[kk][2] = pack2<T>(acc[2 * kk + 1][0], acc[2 * kk + 1][1]);
    a[kk][3] = pack2<T>(acc[2 * kk + 1][2], acc[2 * kk + 1][3]);
  }
}

// One step of the online softmax, in base 2, over raw scores s (Tiles 8-column tiles, columns
// at or past `cols` masked out): s becomes exp2(s * scale_log2 - new max), the running max and
// sum of rows g and g + 8 move on, and `correction` is what the output accumulated so far must
// be multiplied by (0 on the first tile, where the running max was -inf). The sum is taken
// before dropout: the denominator counts every key.
template <int Tiles>
__device__ __forceinline__ void online_softmax(float (&s)[Tiles][4], float (&row_max)[2],
                                               float (&row_sum)[2], float (&correction)[2],
                                               int cols, float scale_log2, int t) {
  float tile_max[2] = {row_max[0], row_max[1]};
#pragma unroll
  for (int nt = 0; nt < Tiles; ++nt) {
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const bool inside = nt * 8 + 2 * t + (c & 1) < cols;
      s[nt][c] = inside ? s[nt][c] * scale_log2 : -kInf;
      tile_max[c / 2] = fmaxf(tile_max[c / 2], s[nt][c]);
    }
  }
  float tile_sum[2] = {0.0f, 0.0f};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
    tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
    correction[r] = exp2f(row_max[r] - tile_max[r]);
    row_max[r] = tile_max[r];
  }
#pragma unroll
  for (int nt = 0; nt < Tiles; ++nt) {
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      s[nt][c] = exp2f(s[nt][c] - row_max[c / 2]);
      tile_sum[c / 2] += s[nt][c];
    }
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) row_sum[r] = row_sum[r] * correction[r] + tile_sum[r];
}

// The backward's step on a 16 x 64 strip of raw scores s = Q K^T and d_p = dO V^T (accumulator
// layout; keys at or past `cols` masked out; `keep` from dropout_keep_bits): P is recomputed
// from the forward's lse (given in base 2, lse * log2 e; +inf on a padded query row gives
// P = 0), then s becomes P after dropout and d_p becomes dS = P (dP' - D_i), dP' the gradient
// reaching the dropped-out probability and D_i = rowsum(dO * O) of rows g and g + 8.
__device__ __forceinline__ void probabilities_and_score_grads(float (&s)[8][4], float (&d_p)[8][4],
                                                              int cols, float scale_log2,
                                                              const float (&lse_log2)[2],
                                                              const float (&dot)[2], uint32_t keep,
                                                              float keep_scale, int t) {
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const bool inside = nt * 8 + 2 * t + (c & 1) < cols;
      const float prob = inside ? exp2f(s[nt][c] * scale_log2 - lse_log2[c / 2]) : 0.0f;
      const bool kept = (keep >> (nt * 4 + c)) & 1u;
      d_p[nt][c] = prob * ((kept ? d_p[nt][c] * keep_scale : 0.0f) - dot[c / 2]);
      s[nt][c] = kept ? prob : 0.0f;
    }
  }
}

// Multiplies rows g and g + 8 of an accumulator by factor[0] and factor[1].
template <int Tiles>
__device__ __forceinline__ void scale_rows(float (&acc)[Tiles][4], const float (&factor)[2]) {
#pragma unroll
  for (int i = 0; i < Tiles; ++i) {
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[i][c] *= factor[c / 2];
  }
}

// The end of the online softmax for rows g and g + 8: the factor that turns the accumulated
// output into the result (dropout's keep scale over the softmax denominator; 0 for a row that
// saw no key) and the row's log-sum-exp in natural log.
__device__ __forceinline__ void finish_softmax(const float (&row_max)[2], const float (&row_sum)[2],
                                               float keep_scale, float (&factor)[2],
                                               float (&row_lse)[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = row_sum[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    factor[r] = sum > 0.0f ? keep_scale / sum : 0.0f;
    row_lse[r] = (row_max[r] + log2f(sum)) * kLn2;
  }
}

// Writes this warp's 16 rows of a result: accumulator rows scaled by factor[0 | 1] (rows g,
// g + 8), staged through `stage` (16 rows of kPitch elements that only this warp uses) for
// 16-byte stores. Rows at or past `length` are written as zeros up to `limit` (padded layout)
// and skipped after.
template <typename T, int D>
__device__ __forceinline__ void store_rows(const float (&acc)[Shape<D>::kDTiles][4],
                                           const float (&factor)[2], T* stage, T* dst,
                                           int64_t row_stride, int first_row, int length, int limit,
                                           int lane) {
  using S = Shape<D>;
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int dt = 0; dt < S::kDTiles; ++dt) {
    *reinterpret_cast<uint32_t*>(stage + g * S::kPitch + dt * 8 + 2 * t) =
        pack2<T>(acc[dt][0] * factor[0], acc[dt][1] * factor[0]);
    *reinterpret_cast<uint32_t*>(stage + (g + 8) * S::kPitch + dt * 8 + 2 * t) =
        pack2<T>(acc[dt][2] * factor[1], acc[dt][3] * factor[1]);
  }
  __syncwarp();
  for (int idx = lane; idx < 16 * S::kChunks; idx += 32) {
    const int r = idx / S::kChunks, c = idx % S::kChunks, row = first_row + r;
    if (row >= limit) continue;
    const uint4 value = row < length
                            ? *reinterpret_cast<const uint4*>(stage + r * S::kPitch + c * 8)
                            : make_uint4(0, 0, 0, 0);
    *reinterpret_cast<uint4*>(dst + row * row_stride + c * 8) = value;
  }
}

// How many rows of a sequence a kernel writes: its length in the packed layout, and all L in
// the padded one, whose rows past the length are written as zeros.
__device__ __forceinline__ int rows_written(const AttentionParams& p, int length) {
  return p.packed ? length : static_cast<int>(p.max_seqlen);
}

// The forward's log-sum-exp of this warp's rows g and g + 8 (+inf for padded rows), written by
// lane t == 0 of each quad. `lse` points at the sequence's first row, head h.
__device__ __forceinline__ void store_lse(float* lse, int64_t heads, const float (&row_lse)[2],
                                          int first_row, int length, int limit, int lane) {
  if (lane % 4 != 0) return;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = first_row + lane / 4 + 8 * r;
    if (row < limit) lse[row * heads] = row < length ? row_lse[r] : kInf;
  }
}

// Host side.

// A tensor's data as the CUDA element type T (__nv_bfloat16 or __half, same bits as ATen's).
template <typename T>
T* data(const at::Tensor& t) {
  return reinterpret_cast<T*>(const_cast<void*>(t.const_data_ptr()));
}

// One block per (sequence, head) and `rows` rows of the longest sequence (queries in the
// forwards, keys in the backwards).
inline dim3 grid_of(const AttentionParams& p, int rows) {
  return dim3(static_cast<unsigned>(p.batch * p.heads),
              static_cast<unsigned>((p.max_seqlen + rows - 1) / rows));
}

// Lets `kernel` take `bytes` of dynamic shared memory (past 48 KB it must be asked for).
template <typename Kernel>
void allow_shared_bytes(Kernel kernel, size_t bytes) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
}

// Calls fn.template operator()<T, D>() with T the CUDA type of `dtype` and D the head dim.
template <typename Fn>
void dispatch_kernel(at::ScalarType dtype, int64_t head_dim, Fn&& fn) {
  auto with_dim = [&]<typename T>() {
    switch (head_dim) {
      case 32:
        return fn.template operator()<T, 32>();
      case 64:
        return fn.template operator()<T, 64>();
      case 128:
        return fn.template operator()<T, 128>();
      default:
        TORCH_CHECK_VALUE(false, "the CUDA attention kernels take head dims 32, 64 and 128, got ",
                          head_dim);
    }
  };
  if (dtype == at::kBFloat16) return with_dim.template operator()<__nv_bfloat16>();
  TORCH_CHECK_TYPE(dtype == at::kHalf, "the CUDA attention kernels take bfloat16 or float16, got ",
                   dtype);
  with_dim.template operator()<__half>();
}

// dispatch_kernel for the wgmma kernels, which take head dims 64 and 128 only (a 64-column
// swizzle block is their unit): other head dims are an error naming `what`.
template <typename Fn>
void dispatch_wgmma_kernel(at::ScalarType dtype, int64_t head_dim, const char* what, Fn&& fn) {
  dispatch_kernel(dtype, head_dim, [&]<typename T, int D>() {
    if constexpr (D == 64 || D == 128) {
      fn.template operator()<T, D>();
    } else {
      TORCH_CHECK_VALUE(false, "the wgmma attention ", what, " takes head dims 64 and 128, got ",
                        D);
    }
  });
}

}  // namespace electra_fast
