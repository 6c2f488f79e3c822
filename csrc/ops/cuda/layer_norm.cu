// dropout_add_layer_norm on CUDA (../layer_norm.h). Two kinds of kernels:
//
// Row kernels, for rows of up to 1024 columns whose tensors are 16-byte aligned (every ELECTRA
// size: 64, 256, 768, 1024): a row belongs to 8, 16 or 32 lanes (as many as its 8-column chunks
// need, so a warp takes 4 rows of 64), each lane holds its chunks in registers after one
// 16-byte load per chunk and tensor, and one Philox call gives a chunk's 8 keep decisions for
// all passes. The backward keeps each lane's weight and bias gradient sums in registers across
// its rows (and, when the op is given x_bias, x's gradient sums: a template flag, so that rows
// without it pay no registers); they meet in shared memory once, at the end of the block.
//
// Loop kernels, for the rest (wider rows, misaligned views): a warp per row, each lane looping
// over its chunks; the passes over a row recompute the sum from x and residual, which the first
// pass left in L1, and the weight and bias gradients are summed per warp in shared memory.
//
// Both sum the parameter gradients per block of rows in a fixed order and over the blocks by
// one at::sum: no atomics, the same bits on every run.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "../layer_norm.h"
#include "pack8.cuh"

namespace electra_fast {
namespace {

constexpr int kForwardWarps = 4;
constexpr int64_t kRowsPerBlock = 32;      // of the backward: one partial sum per block
constexpr int64_t kMaxHidden = 6144;       // 2 * H floats of shared memory per warp fit in 48 KiB
constexpr int64_t kMaxHiddenXBias = 4096;  // and 3 * H with x_bias

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// x + x_bias at column c of a row (xb null: no x_bias).
template <typename x_t>
__device__ __forceinline__ float branch_at(const x_t* x, const float* xb, int64_t c) {
  return xb != nullptr ? static_cast<float>(x[c]) + xb[c] : static_cast<float>(x[c]);
}

// The sums s = residual + (x + x_bias) * keep * scale of columns [8 g, 8 g + 8) of a row, and
// their keep bits.
template <typename x_t, typename r_t>
__device__ __forceinline__ uint32_t chunk_sum(const x_t* x, const float* xb, const r_t* r,
                                              int64_t row, int64_t g, const ResidualDropout& drop,
                                              float (&s)[8]) {
  const uint32_t bits = drop.keep_bits(row, g);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float kept = (bits >> i) & 1u ? branch_at(x, xb, 8 * g + i) * drop.scale : 0.0f;
    s[i] = static_cast<float>(r[8 * g + i]) + kept;
  }
  return bits;
}

template <typename x_t, typename r_t>
__global__ void __launch_bounds__(kForwardWarps * 32)
    forward_loop_kernel(const x_t* __restrict__ x, const r_t* __restrict__ residual,
                        const float* __restrict__ weight, const float* __restrict__ bias,
                        const float* __restrict__ x_bias, const int64_t* __restrict__ seed,
                        ResidualDropout drop, int64_t M, int64_t H, float eps,
                        r_t* __restrict__ out, float* __restrict__ mean_out,
                        float* __restrict__ rstd_out, x_t* __restrict__ out_x) {
  const int lane = threadIdx.x % 32;
  const int64_t row = blockIdx.x * static_cast<int64_t>(kForwardWarps) + threadIdx.x / 32;
  if (row >= M) return;
  if (drop.threshold != 0) drop.seed = static_cast<uint64_t>(*seed);
  const x_t* xr = x + row * H;
  const r_t* rr = residual + row * H;
  float s[8], sum = 0.0f;
  for (int64_t g = lane; g < drop.groups; g += 32) {
    chunk_sum(xr, x_bias, rr, row, g, drop, s);
#pragma unroll
    for (int i = 0; i < 8; ++i) sum += s[i];
  }
  const float mean = warp_sum(sum) / static_cast<float>(H);
  float squares = 0.0f;
  for (int64_t g = lane; g < drop.groups; g += 32) {
    chunk_sum(xr, x_bias, rr, row, g, drop, s);
#pragma unroll
    for (int i = 0; i < 8; ++i) squares += (s[i] - mean) * (s[i] - mean);
  }
  const float rstd = rsqrtf(warp_sum(squares) / static_cast<float>(H) + eps);
  for (int64_t g = lane; g < drop.groups; g += 32) {
    chunk_sum(xr, x_bias, rr, row, g, drop, s);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int64_t c = 8 * g + i;
      const float o = (s[i] - mean) * rstd * weight[c] + bias[c];
      out[row * H + c] = static_cast<r_t>(o);
      if (out_x != nullptr) out_x[row * H + c] = static_cast<x_t>(o);
    }
  }
  if (lane == 0) {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

template <typename x_t, typename r_t>
__global__ void backward_loop_kernel(const r_t* __restrict__ grad_out,
                                     const x_t* __restrict__ grad_out_x, const x_t* __restrict__ x,
                                     const r_t* __restrict__ residual,
                                     const float* __restrict__ weight,
                                     const float* __restrict__ x_bias,
                                     const float* __restrict__ mean, const float* __restrict__ rstd,
                                     const int64_t* __restrict__ seed, ResidualDropout drop,
                                     int64_t M, int64_t H, x_t* __restrict__ grad_x,
                                     r_t* __restrict__ grad_residual, float* __restrict__ partial) {
  // Per warp: H weight-gradient sums, H bias-gradient sums, then (x_bias) H of x's gradient.
  extern __shared__ float sums[];
  const int P = x_bias != nullptr ? 3 : 2;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  float* dw = sums + warp * P * H;
  float* db = dw + H;
  float* dxb = db + H;
  for (int64_t c = lane; c < P * H; c += 32) dw[c] = 0.0f;
  __syncwarp();
  if (drop.threshold != 0) drop.seed = static_cast<uint64_t>(*seed);
  const int64_t first = blockIdx.x * kRowsPerBlock;
  const int64_t last = first + kRowsPerBlock < M ? first + kRowsPerBlock : M;
  for (int64_t row = first + warp; row < last; row += warps) {
    const x_t* xr = x + row * H;
    const r_t* rr = residual + row * H;
    const r_t* dyr = grad_out + row * H;
    const x_t* dyxr = grad_out_x != nullptr ? grad_out_x + row * H : nullptr;
    // The output's gradient at column c: out's, plus out_x's when it has one.
    auto dy_at = [&](int64_t c) {
      return static_cast<float>(dyr[c]) + (dyxr != nullptr ? static_cast<float>(dyxr[c]) : 0.0f);
    };
    const float m = mean[row], inv = rstd[row];
    float s[8], sum_g = 0.0f, sum_gx = 0.0f;
    // Each lane owns its chunks' columns: its updates of dw and db race with no other lane's.
    for (int64_t g = lane; g < drop.groups; g += 32) {
      chunk_sum(xr, x_bias, rr, row, g, drop, s);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int64_t c = 8 * g + i;
        const float xhat = (s[i] - m) * inv, dy = dy_at(c);
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
      const uint32_t bits = chunk_sum(xr, x_bias, rr, row, g, drop, s);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int64_t c = 8 * g + i;
        const float xhat = (s[i] - m) * inv;
        const float ds = inv * (dy_at(c) * weight[c] - mean_g - xhat * mean_gx);
        const float dx = (bits >> i) & 1u ? ds * drop.scale : 0.0f;
        grad_residual[row * H + c] = static_cast<r_t>(ds);
        grad_x[row * H + c] = static_cast<x_t>(dx);
        if (x_bias != nullptr) dxb[c] += dx;
      }
    }
  }
  __syncthreads();
  // partial is [P, blocks, H]: the weight gradient's block sums, the bias gradient's, x_bias's.
  const int64_t blocks = gridDim.x;
  for (int64_t c = threadIdx.x; c < P * H; c += blockDim.x) {
    float total = 0.0f;
    for (int w = 0; w < warps; ++w) total += sums[w * P * H + c];
    partial[(c / H) * blocks * H + static_cast<int64_t>(blockIdx.x) * H + c % H] = total;
  }
}

// ---- Row kernels ----

constexpr int kRowThreads = 128;
constexpr int kMaxRowChunks = 4;  // 8-column chunks per lane: rows up to 32 * 4 * 8 = 1024

// The sum over the kLanes lanes of a row: aligned groups of kLanes lanes, so xor offsets below
// kLanes stay in the group. Every lane of the warp must call it.
template <int kLanes>
__device__ __forceinline__ float row_sum(float v) {
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

// Lane `lane` of a row holds chunks lane, lane + kLanes, ..., as chunk slots 0, 1, ...
template <int kLanes>
__device__ __forceinline__ int64_t chunk_of(int lane, int slot) {
  return lane + static_cast<int64_t>(slot) * kLanes;
}

// Slot j's sums s = residual + (x + x_bias) * keep * scale, loaded (xb null: no x_bias);
// returns the chunk's keep bits.
template <typename x_t, typename r_t>
__device__ __forceinline__ uint32_t load_chunk_sum(const x_t* x, const float* xb, const r_t* r,
                                                   int64_t row, int64_t g, int64_t H,
                                                   const ResidualDropout& drop, float (&s)[8]) {
  float xv[8];
  load8(x + row * H + 8 * g, xv);
  load8(r + row * H + 8 * g, s);
  if (xb != nullptr) {
    float bv[8];
    load8(xb + 8 * g, bv);
#pragma unroll
    for (int i = 0; i < 8; ++i) xv[i] += bv[i];
  }
  const uint32_t bits = drop.keep_bits(row, g);
#pragma unroll
  for (int i = 0; i < 8; ++i) s[i] += (bits >> i) & 1u ? xv[i] * drop.scale : 0.0f;
  return bits;
}

template <typename x_t, typename r_t, int kLanes, int kChunks>
__global__ void __launch_bounds__(kRowThreads)
    forward_row_kernel(const x_t* __restrict__ x, const r_t* __restrict__ residual,
                       const float* __restrict__ weight, const float* __restrict__ bias,
                       const float* __restrict__ x_bias, const int64_t* __restrict__ seed,
                       ResidualDropout drop, int64_t M, int64_t H, float eps, r_t* __restrict__ out,
                       float* __restrict__ mean_out, float* __restrict__ rstd_out,
                       x_t* __restrict__ out_x) {
  const int lane = threadIdx.x % kLanes;
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * kRowThreads + threadIdx.x) / kLanes;
  // Lanes past the last row stay for the shuffles, loading and storing nothing.
  const bool active = row < M;
  if (drop.threshold != 0) drop.seed = static_cast<uint64_t>(*seed);
  float s[kChunks][8];
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < kChunks; ++j) {
    const int64_t g = chunk_of<kLanes>(lane, j);
    if (active && g < drop.groups) {
      load_chunk_sum(x, x_bias, residual, row, g, H, drop, s[j]);
#pragma unroll
      for (int i = 0; i < 8; ++i) sum += s[j][i];
    }
  }
  const float mean = row_sum<kLanes>(sum) / static_cast<float>(H);
  float squares = 0.0f;
#pragma unroll
  for (int j = 0; j < kChunks; ++j) {
    if (active && chunk_of<kLanes>(lane, j) < drop.groups) {
#pragma unroll
      for (int i = 0; i < 8; ++i) squares += (s[j][i] - mean) * (s[j][i] - mean);
    }
  }
  const float rstd = rsqrtf(row_sum<kLanes>(squares) / static_cast<float>(H) + eps);
  if (!active) return;
#pragma unroll
  for (int j = 0; j < kChunks; ++j) {
    const int64_t g = chunk_of<kLanes>(lane, j);
    if (g < drop.groups) {
      float w[8], b[8], o[8];
      load8(weight + 8 * g, w);
      load8(bias + 8 * g, b);
#pragma unroll
      for (int i = 0; i < 8; ++i) o[i] = (s[j][i] - mean) * rstd * w[i] + b[i];
      store8(out + row * H + 8 * g, o);
      if (out_x != nullptr) store8(out_x + row * H + 8 * g, o);
    }
  }
  if (lane == 0) {
    mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

// kXBias: x_bias is given (not null), and x's gradient is summed over the rows too.
template <typename x_t, typename r_t, int kLanes, int kChunks, bool kXBias>
__global__ void __launch_bounds__(kRowThreads)
    backward_row_kernel(const r_t* __restrict__ grad_out, const x_t* __restrict__ grad_out_x,
                        const x_t* __restrict__ x,
                        const r_t* __restrict__ residual, const float* __restrict__ weight,
                        const float* __restrict__ x_bias, const float* __restrict__ mean,
                        const float* __restrict__ rstd, const int64_t* __restrict__ seed,
                        ResidualDropout drop, int64_t M, int64_t H, x_t* __restrict__ grad_x,
                        r_t* __restrict__ grad_residual, float* __restrict__ partial) {
  constexpr int kSlots = kRowThreads / kLanes;  // rows the block works on at once
  constexpr int P = kXBias ? 3 : 2;             // parameter gradients
  // Per row slot: H weight-gradient sums, H bias ones, then (kXBias) H of x's gradient.
  extern __shared__ float sums[];
  const int lane = threadIdx.x % kLanes, slot = threadIdx.x / kLanes;
  if (drop.threshold != 0) drop.seed = static_cast<uint64_t>(*seed);
  const float* xb = kXBias ? x_bias : nullptr;
  float dw[kChunks][8] = {}, db[kChunks][8] = {}, dxb[kXBias ? kChunks : 1][8] = {};
  const int64_t first = blockIdx.x * kRowsPerBlock;
  const int64_t last = first + kRowsPerBlock < M ? first + kRowsPerBlock : M;
  // Every lane takes the same number of turns (the shuffles need the whole warp); a turn past
  // the block's rows loads and stores nothing.
  for (int64_t turn = first; turn < last; turn += kSlots) {
    const int64_t row = turn + slot;
    const bool active = row < last;
    const float m = active ? mean[row] : 0.0f, inv = active ? rstd[row] : 0.0f;
    float xhat[kChunks][8], gw[kChunks][8];  // gw: the output's gradient times the weight
    uint32_t bits[kChunks];
    float sum_g = 0.0f, sum_gx = 0.0f;
#pragma unroll
    for (int j = 0; j < kChunks; ++j) {
      const int64_t g = chunk_of<kLanes>(lane, j);
      if (active && g < drop.groups) {
        float dy[8], w[8];
        bits[j] = load_chunk_sum(x, xb, residual, row, g, H, drop, xhat[j]);
        load8(grad_out + row * H + 8 * g, dy);
        if (grad_out_x != nullptr) {
          float dy_x[8];
          load8(grad_out_x + row * H + 8 * g, dy_x);
#pragma unroll
          for (int i = 0; i < 8; ++i) dy[i] += dy_x[i];
        }
        load8(weight + 8 * g, w);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          xhat[j][i] = (xhat[j][i] - m) * inv;
          gw[j][i] = dy[i] * w[i];
          sum_g += gw[j][i];
          sum_gx += gw[j][i] * xhat[j][i];
          dw[j][i] += dy[i] * xhat[j][i];
          db[j][i] += dy[i];
        }
      }
    }
    const float mean_g = row_sum<kLanes>(sum_g) / static_cast<float>(H);
    const float mean_gx = row_sum<kLanes>(sum_gx) / static_cast<float>(H);
#pragma unroll
    for (int j = 0; j < kChunks; ++j) {
      const int64_t g = chunk_of<kLanes>(lane, j);
      if (active && g < drop.groups) {
        float dr[8], dx[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          dr[i] = inv * (gw[j][i] - mean_g - xhat[j][i] * mean_gx);
          dx[i] = (bits[j] >> i) & 1u ? dr[i] * drop.scale : 0.0f;
          if constexpr (kXBias) dxb[j][i] += dx[i];
        }
        store8(grad_residual + row * H + 8 * g, dr);
        store8(grad_x + row * H + 8 * g, dx);
      }
    }
  }
  // The slots' sums, then the block's per column in slot order (partial is [P, blocks, H]).
  float* own = sums + slot * P * H;
#pragma unroll
  for (int j = 0; j < kChunks; ++j) {
    const int64_t g = chunk_of<kLanes>(lane, j);
    if (g < drop.groups) {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        own[8 * g + i] = dw[j][i];
        own[H + 8 * g + i] = db[j][i];
        if constexpr (kXBias) own[2 * H + 8 * g + i] = dxb[j][i];
      }
    }
  }
  __syncthreads();
  const int64_t blocks = gridDim.x;
  for (int64_t c = threadIdx.x; c < P * H; c += kRowThreads) {
    float total = 0.0f;
    for (int k = 0; k < kSlots; ++k) total += sums[k * P * H + c];
    partial[(c / H) * blocks * H + static_cast<int64_t>(blockIdx.x) * H + c % H] = total;
  }
}

// How the row kernels lay out rows of `groups` chunks: lanes per row and chunks per lane; lanes
// 0 when the loop kernels must take them.
struct RowShape {
  int lanes = 0, chunks = 0;
};

RowShape row_shape(int64_t groups, std::initializer_list<const at::Tensor*> tensors) {
  if (!aligned16(tensors) || groups > 32 * kMaxRowChunks) return {};
  const int lanes = groups <= 8 ? 8 : groups <= 16 ? 16 : 32;
  return {lanes, static_cast<int>((groups + lanes - 1) / lanes)};
}

// Calls f(integral_constant<lanes>, integral_constant<chunks>) for a shape row_shape returns.
template <typename F>
void dispatch_row_shape(RowShape shape, F&& f) {
  using std::integral_constant;
  if (shape.lanes == 8) return f(integral_constant<int, 8>{}, integral_constant<int, 1>{});
  if (shape.lanes == 16) return f(integral_constant<int, 16>{}, integral_constant<int, 1>{});
  switch (shape.chunks) {
    case 1:
      return f(integral_constant<int, 32>{}, integral_constant<int, 1>{});
    case 2:
      return f(integral_constant<int, 32>{}, integral_constant<int, 2>{});
    case 3:
      return f(integral_constant<int, 32>{}, integral_constant<int, 3>{});
    default:
      return f(integral_constant<int, 32>{}, integral_constant<int, kMaxRowChunks>{});
  }
}

void check_cuda_hidden(int64_t H, const std::optional<at::Tensor>& x_bias) {
  const int64_t most = x_bias ? kMaxHiddenXBias : kMaxHidden;
  TORCH_CHECK_VALUE(H % 8 == 0 && H <= most,
                    "x: the CUDA kernel of dropout_add_layer_norm takes a last dimension that is a "
                    "multiple of 8 up to ",
                    most, x_bias ? " with x_bias" : "", ", got ", H);
}

const float* data_or_null(const std::optional<at::Tensor>& t) {
  return t ? t->const_data_ptr<float>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dropout_add_layer_norm_cuda(
    const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
    const at::Tensor& bias, const std::optional<at::Tensor>& x_bias,
    const std::optional<at::Tensor>& seed, double dropout_p, double eps, bool with_out_x) {
  const ResidualDropout drop =
      check_dropout_add_layer_norm(x, residual, weight, bias, x_bias, seed, dropout_p, eps, false);
  const int64_t H = x.size(-1), M = x.numel() / H;
  check_cuda_hidden(H, x_bias);
  const c10::cuda::CUDAGuard guard(x.device());
  auto [out, mean, rstd, out_x] = new_dropout_add_layer_norm_outputs(x, residual, with_out_x);
  if (M == 0) return {out, mean, rstd, out_x};
  const int64_t* seed_ptr = drop.threshold != 0 ? seed->const_data_ptr<int64_t>() : nullptr;
  // (weight: a stand-in for the alignment of what is not given)
  const at::Tensor& xb = x_bias ? *x_bias : weight;
  const at::Tensor& ox = with_out_x ? out_x : x;
  const RowShape shape = row_shape(drop.groups, {&x, &residual, &weight, &bias, &xb, &out, &ox});
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_dtypes(x.scalar_type(), residual.scalar_type(), [&](auto* x_type, auto* r_type) {
    using x_t = std::remove_pointer_t<decltype(x_type)>;
    using r_t = std::remove_pointer_t<decltype(r_type)>;
    const auto args = std::make_tuple(
        x.const_data_ptr<x_t>(), residual.const_data_ptr<r_t>(), weight.const_data_ptr<float>(),
        bias.const_data_ptr<float>(), data_or_null(x_bias), seed_ptr, drop, M, H,
        static_cast<float>(eps), out.mutable_data_ptr<r_t>(), mean.mutable_data_ptr<float>(),
        rstd.mutable_data_ptr<float>(), with_out_x ? out_x.mutable_data_ptr<x_t>() : nullptr);
    if (shape.lanes == 0) {
      const auto blocks = static_cast<unsigned>((M + kForwardWarps - 1) / kForwardWarps);
      std::apply(
          [&](auto... a) {
            forward_loop_kernel<x_t, r_t><<<blocks, kForwardWarps * 32, 0, stream>>>(a...);
          },
          args);
    } else {
      dispatch_row_shape(shape, [&](auto lanes, auto chunks) {
        constexpr int kLanes = decltype(lanes)::value, kChunks = decltype(chunks)::value;
        constexpr int64_t kRows = kRowThreads / kLanes;
        const auto blocks = static_cast<unsigned>((M + kRows - 1) / kRows);
        std::apply(
            [&](auto... a) {
              forward_row_kernel<x_t, r_t, kLanes, kChunks>
                  <<<blocks, kRowThreads, 0, stream>>>(a...);
            },
            args);
      });
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, mean, rstd, out_x};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dropout_add_layer_norm_backward_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_out_x, const at::Tensor& x,
    const at::Tensor& residual, const at::Tensor& weight, const std::optional<at::Tensor>& x_bias,
    const at::Tensor& mean, const at::Tensor& rstd, const std::optional<at::Tensor>& seed,
    double dropout_p) {
  const ResidualDropout drop = check_dropout_add_layer_norm_backward(
      grad_out, grad_out_x, x, residual, weight, x_bias, mean, rstd, seed, dropout_p, false);
  const int64_t H = x.size(-1), M = x.numel() / H, P = parameter_gradients(x_bias);
  check_cuda_hidden(H, x_bias);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor dy = grad_out.contiguous();
  const at::Tensor dy_x = grad_out_x ? grad_out_x->contiguous() : at::Tensor();
  at::Tensor grad_x = at::empty_like(x), grad_residual = at::empty_like(residual);
  const int64_t blocks = (M + kRowsPerBlock - 1) / kRowsPerBlock;
  at::Tensor partial = at::empty({P, blocks, H}, weight.options());
  if (M > 0) {
    // (stand-ins for the alignment of what is not given)
    const at::Tensor& xb = x_bias ? *x_bias : weight;
    const at::Tensor& dyx = dy_x.defined() ? dy_x : x;
    const RowShape shape = row_shape(
        drop.groups, {&dy, &dyx, &x, &residual, &weight, &xb, &grad_x, &grad_residual});
    const int64_t* seed_ptr = drop.threshold != 0 ? seed->const_data_ptr<int64_t>() : nullptr;
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    dispatch_dtypes(x.scalar_type(), residual.scalar_type(), [&](auto* x_type, auto* r_type) {
      using x_t = std::remove_pointer_t<decltype(x_type)>;
      using r_t = std::remove_pointer_t<decltype(r_type)>;
      const auto args = std::make_tuple(
          dy.const_data_ptr<r_t>(), dy_x.defined() ? dy_x.const_data_ptr<x_t>() : nullptr,
          x.const_data_ptr<x_t>(), residual.const_data_ptr<r_t>(),
          weight.const_data_ptr<float>(), data_or_null(x_bias), mean.const_data_ptr<float>(),
          rstd.const_data_ptr<float>(), seed_ptr, drop, M, H, grad_x.mutable_data_ptr<x_t>(),
          grad_residual.mutable_data_ptr<r_t>(), partial.mutable_data_ptr<float>());
      const auto grid = static_cast<unsigned>(blocks);
      if (shape.lanes == 0) {
        const int warps = P * H * 4 * static_cast<int64_t>(sizeof(float)) <= 48 * 1024 ? 4 : 1;
        const size_t shared_bytes = static_cast<size_t>(warps * P * H) * sizeof(float);
        std::apply(
            [&](auto... a) {
              backward_loop_kernel<x_t, r_t><<<grid, warps * 32, shared_bytes, stream>>>(a...);
            },
            args);
      } else {
        dispatch_row_shape(shape, [&](auto lanes, auto chunks) {
          constexpr int kLanes = decltype(lanes)::value, kChunks = decltype(chunks)::value;
          // At most 4 slots of 3 x 1024 columns or 16 of 3 x 64: 48 KiB of shared memory.
          const size_t shared_bytes = (kRowThreads / kLanes) * P * H * sizeof(float);
          std::apply(
              [&](auto... a) {
                if (x_bias) {
                  backward_row_kernel<x_t, r_t, kLanes, kChunks, true>
                      <<<grid, kRowThreads, shared_bytes, stream>>>(a...);
                } else {
                  backward_row_kernel<x_t, r_t, kLanes, kChunks, false>
                      <<<grid, kRowThreads, shared_bytes, stream>>>(a...);
                }
              },
              args);
        });
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  // One reduction over the blocks for all the parameter gradients: [P, H].
  return {grad_x, grad_residual, at::sum(partial, {1})};
}

}  // namespace

TORCH_LIBRARY_IMPL(electra_fast, CUDA, m) {
  m.impl("dropout_add_layer_norm", &dropout_add_layer_norm_cuda);
  m.impl("dropout_add_layer_norm_backward", &dropout_add_layer_norm_backward_cuda);
}

}  // namespace electra_fast
