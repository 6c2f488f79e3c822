// The CPU kernels' gradient sums over rows: each thread sums fixed blocks of rows into its own
// partial sums, then sum_over_blocks adds the blocks in order, so that the result is the same
// bits with any number of threads (a resumed run must repeat an uninterrupted one).
#pragma once
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace electra_fast {

// Rows per block of the partial sums.
constexpr int64_t kRowsPerBlock = 32;

// `partial` holds `blocks` rows of `width` sums; returns their column sums, float32 [width]:
// each added over the blocks in order in double and rounded once.
inline at::Tensor sum_over_blocks(const std::vector<float>& partial, int64_t blocks,
                                  int64_t width) {
  at::Tensor total = at::empty({width}, at::TensorOptions().dtype(at::kFloat));
  float* out = total.mutable_data_ptr<float>();
  at::parallel_for(0, width, 256, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      double sum = 0.0;
      for (int64_t block = 0; block < blocks; ++block) sum += partial[block * width + k];
      out[k] = static_cast<float>(sum);
    }
  });
  return total;
}

// Writes the float32 column sums of `rows` rows of `data` [rows, N] (float, or a type that converts
// to it) to sums[N]. Four rows at a time, (a + b) + (c + d) added to each sum: a sum is loaded and
// stored once per four rows, and the rows are read as four sequential streams. (On the 2-core
// machine, timed with a script outside the repository, this was faster than a row at a time and
// than chunks of columns summed down the rows in registers, whose strided reads the prefetcher
// follows worse: 1.2 ms against 2.0 and 2.6 for bf16 16,384 x 768 on one thread.)
template <typename T>
void sum_rows(const T* __restrict data, int64_t rows, int64_t N, float* __restrict sums) {
  auto value = [](T v) { return static_cast<float>(v); };
  std::fill(sums, sums + N, 0.0f);
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    const T* a = data + r * N;
    const T *b = a + N, *c = b + N, *d = c + N;
    for (int64_t k = 0; k < N; ++k) {
      sums[k] += (value(a[k]) + value(b[k])) + (value(c[k]) + value(d[k]));
    }
  }
  for (; r < rows; ++r) {
    for (int64_t k = 0; k < N; ++k) sums[k] += value(data[r * N + k]);
  }
}

// The float32 column sums of the rows of `data` [M, N]: summed in blocks of kRowsPerBlock rows
// (sum_rows), then over the blocks in order (sum_over_blocks).
template <typename T>
at::Tensor column_sums_in_blocks(const T* data, int64_t M, int64_t N) {
  const int64_t blocks = (M + kRowsPerBlock - 1) / kRowsPerBlock;
  std::vector<float> partial(static_cast<size_t>(blocks * N));
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t block = first; block < last; ++block) {
      const int64_t row = block * kRowsPerBlock;
      sum_rows(data + row * N, std::min(kRowsPerBlock, M - row), N, partial.data() + block * N);
    }
  });
  return sum_over_blocks(partial, blocks, N);
}

}  // namespace electra_fast
