// dropout_add_layer_norm: out = LayerNorm(residual + dropout(x + x_bias)) * weight + bias over
// the last dimension, the end of each block of a post-LayerNorm encoder, in one pass instead of
// three ops (dropout, add, layer_norm) that each read and write the activations. What the CPU
// and CUDA kernels share: the dropout stream and the argument checks.
//
// x_bias (optional, float32 [H]) is the bias of the linear layer that made x, added here instead
// of in that layer's matmul: its gradient is then the column sum of x's gradient, which the
// backward forms from the fp32 values it already holds, instead of a separate reduction over
// the rounded gradient (torch's linear backward).
//
// Dropout: element (row r, column c) of an [M, H] input is kept when the 16-bit half c % 8 of
// the Philox element r * ceil(H / 8) + c / 8 (stream kStreamResidualDropout) is at least
// t = round(p * 2^16), and kept values are scaled by 2^16 / (2^16 - t): the rule of the attention
// dropout (attention.h), so the expectation is exact. The backward regenerates the mask.
//
// Arithmetic in fp32 whatever the dtypes: the sum s = residual + (x + x_bias) * keep * scale is
// never rounded, mean and variance are two passes over s, rstd = 1 / sqrt(var + eps).
//
// out_x (with_out_x): the output rounded to x's dtype as well. Under CUDA autocast the output is
// float32 (the next block's residual) and the next block's matmul casts it to bfloat16, a kernel
// of its own; out_x is that cast, written by the same pass. Its gradient (grad_out_x, in x's
// dtype) is added to out's by the backward, instead of by an add kernel of autograd's.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <type_traits>

#include "philox.h"

namespace electra_fast {

struct ResidualDropout {
  uint64_t seed;
  uint32_t threshold;  // 0: no dropout
  float scale;         // 2^16 / (2^16 - threshold)
  int64_t groups;      // ceil(H / 8): Philox elements per row

  // The 8 keep decisions of columns [8 g, 8 g + 8) of `row`, as a bit mask (bit i: column 8g+i).
  EF_HOST_DEVICE uint32_t keep_bits(int64_t row, int64_t g) const {
    if (threshold == 0) return 0xFFu;
    return electra_fast::keep_bits(
        philox_element(seed, static_cast<uint64_t>(row * groups + g), kStreamResidualDropout),
        threshold);
  }
};

// Calls f(x_t*, r_t*), two null pointers standing for the dtypes, for the pairs the op takes: x
// of residual's dtype, or bfloat16/float16 x with a float32 residual (autocast's mix).
template <typename F>
void dispatch_dtypes(at::ScalarType x, at::ScalarType residual, F&& f) {
  using BF16 = c10::BFloat16;
  using F16 = c10::Half;
  if (residual == at::kFloat) {
    if (x == at::kBFloat16) return f(static_cast<BF16*>(nullptr), static_cast<float*>(nullptr));
    if (x == at::kHalf) return f(static_cast<F16*>(nullptr), static_cast<float*>(nullptr));
    return f(static_cast<float*>(nullptr), static_cast<float*>(nullptr));
  }
  if (residual == at::kBFloat16) return f(static_cast<BF16*>(nullptr), static_cast<BF16*>(nullptr));
  return f(static_cast<F16*>(nullptr), static_cast<F16*>(nullptr));
}

// Validates the forward's arguments; returns the dropout settings (the seed read on the host,
// which the CPU kernel needs; the CUDA kernel reads it on the device and ignores this one's).
ResidualDropout check_dropout_add_layer_norm(const at::Tensor& x, const at::Tensor& residual,
                                             const at::Tensor& weight, const at::Tensor& bias,
                                             const std::optional<at::Tensor>& x_bias,
                                             const std::optional<at::Tensor>& seed,
                                             double dropout_p, double eps, bool read_seed);

// Validates the backward's arguments (the forward's, and those it did not see); returns the
// dropout settings as check_dropout_add_layer_norm does.
ResidualDropout check_dropout_add_layer_norm_backward(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_out_x, const at::Tensor& x,
    const at::Tensor& residual,
    const at::Tensor& weight, const std::optional<at::Tensor>& x_bias, const at::Tensor& mean,
    const at::Tensor& rstd, const std::optional<at::Tensor>& seed, double dropout_p,
    bool read_seed);

// The backward's sums over rows come out as one float32 [P, H] tensor: the weight's gradient,
// the bias's, then (P = 3) x_bias's.
inline int64_t parameter_gradients(const std::optional<at::Tensor>& x_bias) {
  return x_bias.has_value() ? 3 : 2;
}

// The forward's outputs, allocated: out (residual's dtype), mean and rstd (float32, x's shape
// without its last dimension), out_x (x's dtype and shape when with_out_x, else empty).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> new_dropout_add_layer_norm_outputs(
    const at::Tensor& x, const at::Tensor& residual, bool with_out_x);

}  // namespace electra_fast
