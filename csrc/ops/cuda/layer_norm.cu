// dropout_add_layer_norm on CUDA (../layer_norm.h): a warp per row. Each lane takes chunks of 8
// columns (one Philox call gives their 8 keep decisions); the passes over a row (mean, variance,
// output; in the backward the two reductions, then the gradients) recompute the sum from x and
// residual, which the first pass left in L1, instead of holding it. The weight and bias
// gradients are summed per warp in shared memory, per block of rows in a fixed order, and over
// the blocks by at::sum: no atomics, the same bits on every run.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <type_traits>

#include "../layer_norm.h"

namespace electra_fast {
namespace {

constexpr int kForwardWarps = 4;
constexpr int64_t kRowsPerBlock = 32;  // of the backward: one partial sum per block
constexpr int64_t kMaxHidden = 6144;   // 2 * H floats of shared memory per warp fit in 48 KiB

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// The sums s = residual + x * keep * scale of columns [8 g, 8 g + 8) of a row, and their keep
// bits.
template <typename x_t, typename r_t>
__device__ __forceinline__ uint32_t chunk_sum(const x_t* x, const r_t* r, int64_t row, int64_t g,
                                              const ResidualDropout& drop, float (&s)[8]) {
  const uint32_t bits = drop.keep_bits(row, g);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float kept = (bits >> i) & 1u ? static_cast<float>(x[8 * g + i]) * drop.scale : 0.0f;
    s[i] = static_cast<float>(r[8 * g + i]) + kept;
  }
  return bits;
}

template <typename x_t, typename r_t>
__global__ void __launch_bounds__(kForwardWarps * 32)
    forward_kernel(const x_t* __restrict__ x, const r_t* __restrict__ residual,
                   const float* __restrict__ weight, const float* __restrict__ bias,
                   const int64_t* __restrict__ seed, ResidualDropout drop, int64_t M, int64_t H,
                   float eps, r_t* __restrict__ out, float* __restrict__ mean_out,
                   float* __restrict__ rstd_out) {
  const int lane = threadIdx.x % 32;
  const int64_t row = blockIdx.x * static_cast<int64_t>(kForwardWarps) + threadIdx.x / 32;
  if (row >= M) return;
  if (drop.threshold != 0) drop.seed = static_cast<uint64_t>(*seed);
  const x_t* xr = x + row * H;
  const r_t* rr = residual + row * H;
  float s[8], sum = 0.0f;
  for (int64_t g = lane; g < drop.groups; g += 32) {
    chunk_sum(xr, rr, row, g, drop, s);
#pragma unroll
    for (int i = 0; i < 8; ++i) sum += s[i];
  }
  const float mean = warp_sum(sum) / static_cast<float>(H);
  float squares = 0.0f;
  for (int64_t g = lane; g < drop.groups; g += 32) {
    chunk_sum(xr, rr, row, g, drop, s);
#pragma unroll
    for (int i = 0; i < 8; ++i) squares += (s[i] - mean) * (s[i] - mean);
  }
  const float rstd = rsqrtf(warp_sum(squares) / static_cast<float>(H) + eps);
  for (int64_t g = lane; g < drop.groups; g += 32) {
    chunk_sum(xr, rr, row, g, drop, s);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int64_t c = 8 * g + i;
      out[row * H + c] = static_cast<r_t>((s[i] - mean) * rstd * weight[c] + bias[c]);
    }
  }
  if (lane == 0) {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

template <typename x_t, typename r_t>
__global__ void backward_kernel(const r_t* __restrict__ grad_out, const x_t* __restrict__ x,
                                const r_t* __restrict__ residual, const float* __restrict__ weight,
                                const float* __restrict__ mean, const float* __restrict__ rstd,
                                const int64_t* __restrict__ seed, ResidualDropout drop, int64_t M,
                                int64_t H, x_t* __restrict__ grad_x,
                                r_t* __restrict__ grad_residual, float* __restrict__ partial) {
  extern __shared__ float sums[];  // per warp: H weight-gradient sums, then H bias-gradient sums
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  float* dw = sums + warp * 2 * H;
  float* db = dw + H;
  for (int64_t c = lane; c < 2 * H; c += 32) dw[c] = 0.0f;
  __syncwarp();
  if (drop.threshold != 0) drop.seed = static_cast<uint64_t>(*seed);
  const int64_t first = blockIdx.x * kRowsPerBlock;
  const int64_t last = first + kRowsPerBlock < M ? first + kRowsPerBlock : M;
  for (int64_t row = first + warp; row < last; row += warps) {
    const x_t* xr = x + row * H;
    const r_t* rr = residual + row * H;
    const r_t* dyr = grad_out + row * H;
    const float m = mean[row], inv = rstd[row];
    float s[8], sum_g = 0.0f, sum_gx = 0.0f;
    // Each lane owns its chunks' columns: its updates of dw and db race with no other lane's.
    for (int64_t g = lane; g < drop.groups; g += 32) {
      chunk_sum(xr, rr, row, g, drop, s);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int64_t c = 8 * g + i;
        const float xhat = (s[i] - m) * inv, dy = static_cast<float>(dyr[c]);
        const float gc = dy * weight[c];
        sum_g += gc;
        sum_gx += gc * xhat;
        dw[c] += dy * xhat;
        db[c] += dy;
      }
    }
    const float mean_g = warp_sum(sum_g) / static_cast<float>(H);
    const float mean_gx = warp_sum(sum_gx) / static_cast<float>(H);
    for (int64_t g = lane; g < drop.groups; g += 32) {
      const uint32_t bits = chunk_sum(xr, rr, row, g, drop, s);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int64_t c = 8 * g + i;
        const float xhat = (s[i] - m) * inv;
        const float ds = inv * (static_cast<float>(dyr[c]) * weight[c] - mean_g - xhat * mean_gx);
        grad_residual[row * H + c] = static_cast<r_t>(ds);
        grad_x[row * H + c] = static_cast<x_t>((bits >> i) & 1u ? ds * drop.scale : 0.0f);
      }
    }
  }
  __syncthreads();
  // partial is [2, blocks, H]: the weight gradient's block sums, then the bias gradient's.
  const int64_t blocks = gridDim.x;
  for (int64_t c = threadIdx.x; c < 2 * H; c += blockDim.x) {
    float total = 0.0f;
    for (int w = 0; w < warps; ++w) total += sums[w * 2 * H + c];
    partial[(c / H) * blocks * H + static_cast<int64_t>(blockIdx.x) * H + c % H] = total;
  }
}

void check_cuda_hidden(int64_t H) {
  TORCH_CHECK_VALUE(H % 8 == 0 && H <= kMaxHidden,
                    "x: the CUDA kernel of dropout_add_layer_norm takes a last dimension that is a "
                    "multiple of 8 up to ",
                    kMaxHidden, ", got ", H);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dropout_add_layer_norm_cuda(
    const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
    const at::Tensor& bias, const std::optional<at::Tensor>& seed, double dropout_p, double eps) {
  const ResidualDropout drop =
      check_dropout_add_layer_norm(x, residual, weight, bias, seed, dropout_p, eps, false);
  const int64_t H = x.size(-1), M = x.numel() / H;
  check_cuda_hidden(H);
  const c10::cuda::CUDAGuard guard(x.device());
  auto [out, mean, rstd] = new_dropout_add_layer_norm_outputs(x, residual);
  if (M == 0) return {out, mean, rstd};
  const int64_t* seed_ptr = drop.threshold != 0 ? seed->const_data_ptr<int64_t>() : nullptr;
  const auto blocks = static_cast<unsigned>((M + kForwardWarps - 1) / kForwardWarps);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_dtypes(x.scalar_type(), residual.scalar_type(), [&](auto* x_type, auto* r_type) {
    using x_t = std::remove_pointer_t<decltype(x_type)>;
    using r_t = std::remove_pointer_t<decltype(r_type)>;
    forward_kernel<x_t, r_t><<<blocks, kForwardWarps * 32, 0, stream>>>(
        x.const_data_ptr<x_t>(), residual.const_data_ptr<r_t>(), weight.const_data_ptr<float>(),
        bias.const_data_ptr<float>(), seed_ptr, drop, M, H, static_cast<float>(eps),
        out.mutable_data_ptr<r_t>(), mean.mutable_data_ptr<float>(),
        rstd.mutable_data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dropout_add_layer_norm_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& residual,
    const at::Tensor& weight, const at::Tensor& mean, const at::Tensor& rstd,
    const std::optional<at::Tensor>& seed, double dropout_p) {
  const ResidualDropout drop = check_dropout_add_layer_norm_backward(
      grad_out, x, residual, weight, mean, rstd, seed, dropout_p, false);
  const int64_t H = x.size(-1), M = x.numel() / H;
  check_cuda_hidden(H);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor dy = grad_out.contiguous();
  at::Tensor grad_x = at::empty_like(x), grad_residual = at::empty_like(residual);
  const int64_t blocks = (M + kRowsPerBlock - 1) / kRowsPerBlock;
  at::Tensor partial = at::empty({2, blocks, H}, weight.options());
  if (M > 0) {
    const int warps = 2 * H * 4 * static_cast<int64_t>(sizeof(float)) <= 48 * 1024 ? 4 : 1;
    const size_t shared_bytes = static_cast<size_t>(warps) * 2 * H * sizeof(float);
    const int64_t* seed_ptr = drop.threshold != 0 ? seed->const_data_ptr<int64_t>() : nullptr;
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    dispatch_dtypes(x.scalar_type(), residual.scalar_type(), [&](auto* x_type, auto* r_type) {
      using x_t = std::remove_pointer_t<decltype(x_type)>;
      using r_t = std::remove_pointer_t<decltype(r_type)>;
      backward_kernel<x_t, r_t>
          <<<static_cast<unsigned>(blocks), warps * 32, shared_bytes, stream>>>(
              dy.const_data_ptr<r_t>(), x.const_data_ptr<x_t>(), residual.const_data_ptr<r_t>(),
              weight.const_data_ptr<float>(), mean.const_data_ptr<float>(),
              rstd.const_data_ptr<float>(), seed_ptr, drop, M, H, grad_x.mutable_data_ptr<x_t>(),
              grad_residual.mutable_data_ptr<r_t>(), partial.mutable_data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  // Two sums, not one of [2, H]: the op's outputs must not alias one another.
  return {grad_x, grad_residual, at::sum(partial[0], {0}), at::sum(partial[1], {0})};
}

}  // namespace

TORCH_LIBRARY_IMPL(electra_fast, CUDA, m) {
  m.impl("dropout_add_layer_norm", &dropout_add_layer_norm_cuda);
  m.impl("dropout_add_layer_norm_backward", &dropout_add_layer_norm_backward_cuda);
}

}  // namespace electra_fast
