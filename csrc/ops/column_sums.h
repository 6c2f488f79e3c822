// column_sums: the float32 sums of x [..., N] over every dimension but the last, a linear
// layer's bias gradient from its output's. torch's dY.sum(0) reads dY as well, but on an H100 its
// reductions of the bias gradients of an ELECTRA-small step took 2.3 ms
// (benchmarks/results/2026-11-24_h100.md) for about 1.1 GB counted by hand, 0.5 TB/s; these kernels
// read x once, 16 bytes at a time, and add the partial sums of fixed blocks of rows in a fixed
// order, so that the result does not depend on the number of threads.
#pragma once
#include <ATen/core/Tensor.h>

namespace electra_fast {

// x: contiguous float32, bfloat16 or float16 with at least one dimension.
void check_column_sums(const at::Tensor& x);

}  // namespace electra_fast
