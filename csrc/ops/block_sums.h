// The CPU kernels' gradient sums over rows: each thread sums fixed blocks of rows into its own
// partial sums, then sum_over_blocks adds the blocks in order, so that the result is the same
// bits with any number of threads (a resumed run must repeat an uninterrupted one).
#pragma once
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstdint>
#include <vector>

namespace electra_fast {

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

}  // namespace electra_fast
