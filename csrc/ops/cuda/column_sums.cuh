// Sums over the rows of [M, N] values, in float32: a linear layer's bias gradient (column_sums.cu)
// and bias_gelu's, whose backward sums the gradient it computes (bias_gelu.cu).
//
// A block takes kColumnSumRows rows of one tile of columns. Each lane owns kWidth columns (8 with
// 16-byte loads, else 1) and keeps their sums in registers over the block's rows; `lanes` lanes
// cover the tile and kColumnSumThreads / lanes row slots take turns down the rows, so that a
// narrow row still keeps every thread busy. The slots' sums meet in shared memory in slot order,
// each block writes its partial sums, and at::sum adds the blocks': no atomics, the same bits on
// every run.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>

#include <cstdint>

namespace electra_fast {

constexpr int kColumnSumThreads = 128;
constexpr int64_t kColumnSumRows = 32;

// Adds up values.at(row, column, v), the kWidth values from (row, column) on, over the block's
// rows, and writes the block's sums to partial[blockIdx.x][...]. values.start(column) runs once
// per lane before its rows (bias_gelu loads its bias there).
template <int kWidth, typename Values>
__device__ __forceinline__ void sum_block_columns(Values& values, int64_t M, int64_t N, int lanes,
                                                  float* __restrict__ partial) {
  __shared__ float sums[kColumnSumThreads * kWidth];  // per row slot: its lanes' sums
  const int slots = kColumnSumThreads / lanes;
  const int lane = threadIdx.x % lanes, slot = threadIdx.x / lanes;
  const int64_t column = (static_cast<int64_t>(blockIdx.y) * lanes + lane) * kWidth;
  float total[kWidth] = {};
  if (column < N) {
    values.start(column);
    const int64_t first = blockIdx.x * kColumnSumRows;
    const int64_t last = first + kColumnSumRows < M ? first + kColumnSumRows : M;
#pragma unroll 4
    for (int64_t row = first + slot; row < last; row += slots) {
      float v[kWidth];
      values.at(row, column, v);
#pragma unroll
      for (int k = 0; k < kWidth; ++k) total[k] += v[k];
    }
  }
#pragma unroll
  for (int k = 0; k < kWidth; ++k) sums[slot * lanes * kWidth + lane * kWidth + k] = total[k];
  __syncthreads();
  const int tile = lanes * kWidth;
  for (int t = threadIdx.x; t < tile; t += kColumnSumThreads) {
    const int64_t c = static_cast<int64_t>(blockIdx.y) * tile + t;
    if (c >= N) continue;
    float sum = 0.0f;
    for (int s = 0; s < slots; ++s) sum += sums[s * tile + t];
    partial[blockIdx.x * N + c] = sum;
  }
}

// The launch of sum_block_columns over [M, N] read `width` columns at a time, and the buffer of
// the blocks' partial sums; total() adds them up.
struct ColumnSumLaunch {
  int lanes = 1;
  dim3 grid;
  at::Tensor partial;  // float32 [row blocks, N]

  ColumnSumLaunch(int64_t M, int64_t N, int width, const at::TensorOptions& options) {
    const int64_t row_blocks = (M + kColumnSumRows - 1) / kColumnSumRows;
    const int64_t groups = (N + width - 1) / width;  // per row
    while (lanes < kColumnSumThreads && lanes < groups) lanes *= 2;
    grid = dim3(static_cast<unsigned>(row_blocks),
                static_cast<unsigned>((groups + lanes - 1) / lanes));
    partial = at::empty({row_blocks, N}, options.dtype(at::kFloat));
  }

  at::Tensor total() const { return at::sum(partial, {0}); }
};

}  // namespace electra_fast
