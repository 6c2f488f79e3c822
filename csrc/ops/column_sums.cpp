// column_sums on the CPU (column_sums.h), and the argument check both devices share.
#include "column_sums.h"

#include <torch/library.h>

#include "block_sums.h"
#include "checks.h"
#include "dispatch.h"

namespace electra_fast {

void check_column_sums(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() >= 1, "x must have a last dimension, got shape ", x.sizes());
  EF_CHECK_CONTIGUOUS(x);
  EF_CHECK_FLOATS(x);
}

namespace {

at::Tensor column_sums_cpu(const at::Tensor& x) {
  check_column_sums(x);
  const int64_t N = x.size(-1), M = N == 0 ? 0 : x.numel() / N;
  at::Tensor sums;
  EF_DISPATCH_FLOATS(x.scalar_type(), "column_sums",
                     [&] { sums = column_sums_in_blocks(x.const_data_ptr<scalar_t>(), M, N); });
  return sums;
}

}  // namespace

TORCH_LIBRARY_IMPL(electra_fast, CPU, m) { m.impl("column_sums", &column_sums_cpu); }

}  // namespace electra_fast
