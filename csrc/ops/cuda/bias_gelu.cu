// bias_gelu on CUDA (../bias_gelu.h).
//
// Forward: elementwise, 8 elements a thread with 16-byte loads when the last dimension is a
// multiple of 8 and the tensors are 16-byte aligned (every ELECTRA size), else one element a
// thread.
//
// Backward: a block takes kRowsPerBlock rows of one tile of columns. Each lane owns kWidth
// columns (8 with the 16-byte loads, else 1) and keeps their bias-gradient sums in registers
// over the block's rows; `lanes` lanes cover the tile and kThreads / lanes row slots take turns
// down the rows, so a 256-column row keeps all 128 threads busy. The slots' sums meet in shared
// memory in slot order, and at::sum adds the blocks' partial sums: no atomics, the same bits on
// every run.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <tuple>

#include "../bias_gelu.h"
#include "../dispatch.h"
#include "pack8.cuh"

namespace electra_fast {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kRowsPerBlock = 32;

// kWidth consecutive elements: load8/store8 when kWidth is 8, else one by one.
template <int kWidth, typename T>
__device__ __forceinline__ void load(const T* p, float (&out)[kWidth]) {
  if constexpr (kWidth == 8) {
    load8(p, out);
  } else {
#pragma unroll
    for (int i = 0; i < kWidth; ++i) out[i] = static_cast<float>(p[i]);
  }
}

template <int kWidth, typename T>
__device__ __forceinline__ void store(T* p, const float (&in)[kWidth]) {
  if constexpr (kWidth == 8) {
    store8(p, in);
  } else {
#pragma unroll
    for (int i = 0; i < kWidth; ++i) p[i] = static_cast<T>(in[i]);
  }
}

// Element groups i of kWidth elements (a group never straddles two rows).
template <typename T, int kWidth>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const T* __restrict__ x, const float* __restrict__ bias, int64_t groups,
                   int64_t row_groups, bool approximate, T* __restrict__ y) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(kThreads) + threadIdx.x; i < groups;
       i += stride) {
    float v[kWidth], b[kWidth];
    load<kWidth>(x + kWidth * i, v);
    load<kWidth>(bias + kWidth * (i % row_groups), b);
#pragma unroll
    for (int k = 0; k < kWidth; ++k) v[k] = gelu_value(v[k] + b[k], approximate);
    store<kWidth>(y + kWidth * i, v);
  }
}

template <typename T, int kWidth>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const T* __restrict__ grad, const T* __restrict__ x,
                    const float* __restrict__ bias, int64_t M, int64_t N, int lanes,
                    bool approximate, T* __restrict__ grad_x, float* __restrict__ partial) {
  __shared__ float sums[kThreads * kWidth];  // per row slot: its lanes' column sums
  const int slots = kThreads / lanes;
  const int lane = threadIdx.x % lanes, slot = threadIdx.x / lanes;
  const int64_t column = (static_cast<int64_t>(blockIdx.y) * lanes + lane) * kWidth;
  float total[kWidth] = {};
  if (column < N) {
    float b[kWidth];
    load<kWidth>(bias + column, b);
    const int64_t first = blockIdx.x * kRowsPerBlock;
    const int64_t last = first + kRowsPerBlock < M ? first + kRowsPerBlock : M;
#pragma unroll 4
    for (int64_t row = first + slot; row < last; row += slots) {
      float dy[kWidth], v[kWidth];
      load<kWidth>(grad + row * N + column, dy);
      load<kWidth>(x + row * N + column, v);
#pragma unroll
      for (int k = 0; k < kWidth; ++k) {
        v[k] = dy[k] * gelu_derivative(v[k] + b[k], approximate);
        total[k] += v[k];
      }
      store<kWidth>(grad_x + row * N + column, v);
    }
  }
#pragma unroll
  for (int k = 0; k < kWidth; ++k) sums[slot * lanes * kWidth + lane * kWidth + k] = total[k];
  __syncthreads();
  const int tile = lanes * kWidth;
  for (int t = threadIdx.x; t < tile; t += kThreads) {
    const int64_t c = static_cast<int64_t>(blockIdx.y) * tile + t;
    if (c >= N) continue;
    float sum = 0.0f;
    for (int s = 0; s < slots; ++s) sum += sums[s * tile + t];
    partial[blockIdx.x * N + c] = sum;
  }
}

// The vector path: whole 8-column groups in 16-byte aligned tensors.
bool vector_path(int64_t N, std::initializer_list<const at::Tensor*> tensors) {
  return N % 8 == 0 && aligned16(tensors);
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
  const int64_t row_blocks = (M + kRowsPerBlock - 1) / kRowsPerBlock;
  at::Tensor partial = at::empty({row_blocks, N}, bias.options());
  if (M > 0) {
    const bool vector = vector_path(N, {&dy, &x, &bias, &grad_x});
    const int width = vector ? 8 : 1;
    const int64_t groups = (N + width - 1) / width;  // per row
    int lanes = 1;
    while (lanes < kThreads && lanes < groups) lanes *= 2;
    const dim3 grid(static_cast<unsigned>(row_blocks),
                    static_cast<unsigned>((groups + lanes - 1) / lanes));
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    EF_DISPATCH_FLOATS(x.scalar_type(), "bias_gelu_backward", [&] {
      const auto args =
          std::make_tuple(dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                          bias.const_data_ptr<float>(), M, N, lanes, approximate,
                          grad_x.mutable_data_ptr<scalar_t>(), partial.mutable_data_ptr<float>());
      std::apply(
          [&](auto... a) {
            if (vector) {
              backward_kernel<scalar_t, 8><<<grid, kThreads, 0, stream>>>(a...);
            } else {
              backward_kernel<scalar_t, 1><<<grid, kThreads, 0, stream>>>(a...);
            }
          },
          args);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {grad_x, at::sum(partial, {0})};
}

}  // namespace

TORCH_LIBRARY_IMPL(electra_fast, CUDA, m) {
  m.impl("bias_gelu", &bias_gelu_cuda);
  m.impl("bias_gelu_backward", &bias_gelu_backward_cuda);
}

}  // namespace electra_fast
