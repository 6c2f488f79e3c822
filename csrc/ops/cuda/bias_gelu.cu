// bias_gelu on CUDA (../bias_gelu.h).
//
// Forward: elementwise, 8 elements a thread with 16-byte loads when the last dimension is a
// multiple of 8 and the tensors are 16-byte aligned (every ELECTRA size), else one element a
// thread.
//
// Backward: x's gradient is written in the pass that sums it over the rows for the bias's
// (column_sums.cuh: each lane's column sums in registers, the blocks' partial sums added in a
// fixed order).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "../bias_gelu.h"
#include "../dispatch.h"
#include "column_sums.cuh"
#include "pack8.cuh"

namespace electra_fast {
namespace {

constexpr int kThreads = 128;  // of the forward

// Element groups i of kWidth elements (a group never straddles two rows).
template <typename T, int kWidth>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const T* __restrict__ x, const float* __restrict__ bias, int64_t groups,
                   int64_t row_groups, bool approximate, T* __restrict__ y) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < groups;
       i += stride) {
    float v[kWidth], b[kWidth];
    load_group<kWidth>(x + kWidth * i, v);
    load_group<kWidth>(bias + kWidth * (i % row_groups), b);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) v[k] = gelu_value(v[k] + b[k], approximate);
    store_group<kWidth>(y + kWidth * i, v);
  }
}

// The values bias_gelu's backward sums: x's gradient, written as it goes.
template <typename T, int kWidth>
struct GeluGradient {
  const T* __restrict__ grad;
  const T* __restrict__ x;
  const float* __restrict__ bias;
  int64_t N;
  bool approximate;
  T* __restrict__ grad_x;
  float b[kWidth];

  __device__ void start(int64_t column) { load_group<kWidth>(bias + column, b); }

  __device__ void at(int64_t row, int64_t column, float (&v)[kWidth]) {
    float dy[kWidth];
    load_group<kWidth>(grad + row * N + column, dy);
    load_group<kWidth>(x + row * N + column, v);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) v[k] = dy[k] * gelu_derivative(v[k] + b[k], approximate);
    store_group<kWidth>(grad_x + row * N + column, v);
  }
};

template <typename T, int kWidth>
__global__ void __launch_bounds__(kColumnSumThreads)
    backward_kernel(GeluGradient<T, kWidth> values, int64_t M, int lanes, float* partial) {
  sum_block_columns<kWidth>(values, M, values.N, lanes, partial);
}

at::Tensor bias_gelu_cuda(const at::Tensor& x, const at::Tensor& bias, bool approximate) {
  check_bias_gelu(x, bias);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty_like(x);
  const int64_t N = x.size(-1), n = x.numel();
  if (n == 0) return y;
  const bool vector = vector_path(N, {&x, &bias, &y});
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  EF_DISPATCH_FLOATS(x.scalar_type(), "bias_gelu", [&] {
    const int width = vector ? 8 : 1;
    const int64_t groups = n / width;
    const auto blocks =
        static_cast<unsigned>(std::min<int64_t>((groups + kThreads - 1) / kThreads, 1 << 16));
    const auto* xp = x.const_data_ptr<scalar_t>();
    auto* yp = y.mutable_data_ptr<scalar_t>();
    if (vector) {
      forward_kernel<scalar_t, 8><<<blocks, kThreads, 0, stream>>>(xp, bias.const_data_ptr<float>(),
                                                                   groups, N / 8, approximate, yp);
    } else {
      forward_kernel<scalar_t, 1><<<blocks, kThreads, 0, stream>>>(xp, bias.const_data_ptr<float>(),
                                                                   groups, N, approximate, yp);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> bias_gelu_backward_cuda(const at::Tensor& grad,
                                                           const at::Tensor& x,
                                                           const at::Tensor& bias,
                                                           bool approximate) {
  check_bias_gelu_backward(grad, x, bias);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor dy = grad.contiguous();
  at::Tensor grad_x = at::empty_like(x);
  const int64_t N = x.size(-1), M = x.numel() / N;
  const bool vector = vector_path(N, {&dy, &x, &bias, &grad_x});
  const ColumnSumLaunch launch(M, N, vector ? 8 : 1, bias.options());
  if (M > 0) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    EF_DISPATCH_FLOATS(x.scalar_type(), "bias_gelu_backward", [&] {
      const auto* g = dy.const_data_ptr<scalar_t>();
      const auto* xp = x.const_data_ptr<scalar_t>();
      const float* b = bias.const_data_ptr<float>();
      auto* gx = grad_x.mutable_data_ptr<scalar_t>();
      float* partial = launch.partial.mutable_data_ptr<float>();
      if (vector) {
        backward_kernel<scalar_t, 8><<<launch.grid, kColumnSumThreads, 0, stream>>>(
            {g, xp, b, N, approximate, gx, {}}, M, launch.lanes, partial);
      } else {
        backward_kernel<scalar_t, 1><<<launch.grid, kColumnSumThreads, 0, stream>>>(
            {g, xp, b, N, approximate, gx, {}}, M, launch.lanes, partial);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {grad_x, launch.total()};
}

}  // namespace

TORCH_LIBRARY_IMPL(electra_fast, CUDA, m) {
  m.impl("bias_gelu", &bias_gelu_cuda);
  m.impl("bias_gelu_backward", &bias_gelu_backward_cuda);
}

}  // namespace electra_fast
