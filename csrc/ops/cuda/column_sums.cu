// column_sums on CUDA (../column_sums.h): one read of x, 16-byte loads where its rows allow
// (column_sums.cuh), then the blocks' partial sums added.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../column_sums.h"
#include "../dispatch.h"
#include "column_sums.cuh"
#include "pack8.cuh"

namespace electra_fast {
namespace {

template <typename T, int kWidth>
struct Values {
  const T* __restrict__ x;
  int64_t N;

  __device__ void start(int64_t) {}

  __device__ void at(int64_t row, int64_t column, float (&v)[kWidth]) const {
    load_group<kWidth>(x + row * N + column, v);
  }
};

template <typename T, int kWidth>
__global__ void __launch_bounds__(kColumnSumThreads)
    column_sums_kernel(Values<T, kWidth> values, int64_t M, int lanes, float* partial) {
  sum_block_columns<kWidth>(values, M, values.N, lanes, partial);
}

at::Tensor column_sums_cuda(const at::Tensor& x) {
  check_column_sums(x);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(-1), M = N == 0 ? 0 : x.numel() / N;
  const bool vector = vector_path(N, {&x});
  const ColumnSumLaunch launch(M, N, vector ? 8 : 1, x.options());
  if (M > 0 && N > 0) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    EF_DISPATCH_FLOATS(x.scalar_type(), "column_sums", [&] {
      const auto* xp = x.const_data_ptr<scalar_t>();
      float* partial = launch.partial.mutable_data_ptr<float>();
      if (vector) {
        column_sums_kernel<scalar_t, 8>
            <<<launch.grid, kColumnSumThreads, 0, stream>>>({xp, N}, M, launch.lanes, partial);
      } else {
        column_sums_kernel<scalar_t, 1>
            <<<launch.grid, kColumnSumThreads, 0, stream>>>({xp, N}, M, launch.lanes, partial);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return launch.total();
}

}  // namespace

TORCH_LIBRARY_IMPL(electra_fast, CUDA, m) { m.impl("column_sums", &column_sums_cuda); }

}  // namespace electra_fast
