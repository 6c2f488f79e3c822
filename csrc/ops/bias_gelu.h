// bias_gelu: y = gelu(x + bias) over the last dimension, the activation of a feed-forward block
// whose first linear layer runs without its bias. The backward gives the gradient of x and, from
// the same fp32 values, the bias's (their sum over the rows): torch's linear + gelu would read
// the rounded gradient again in a reduction of its own. What the CPU and CUDA kernels share: the
// function, its derivative and the argument checks.
//
// Arithmetic in fp32 whatever x's dtype (float32, bfloat16, float16); bias is float32. The
// formulas are torch's (aten/src/ATen/native/cuda/ActivationGeluKernel.cu): the exact GELU
// 0.5 x (1 + erf(x / sqrt 2)), or with `approximate` the tanh form
// 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))).
#pragma once
#include <ATen/core/Tensor.h>

#include <cmath>

#include "philox.h"  // EF_HOST_DEVICE

namespace electra_fast {

constexpr float kGeluSqrtHalf = 0.70710678118654752440f;       // 1 / sqrt(2)
constexpr float kGeluInvSqrtTwoPi = 0.39894228040143267794f;   // 1 / sqrt(2 pi)
constexpr float kGeluSqrtTwoOverPi = 0.79788456080286535588f;  // sqrt(2 / pi)
constexpr float kGeluCubic = 0.044715f;

EF_HOST_DEVICE float gelu_value(float v, bool approximate) {
  if (approximate) {
    const float inner = kGeluSqrtTwoOverPi * (v + kGeluCubic * v * v * v);
    return 0.5f * v * (1.0f + tanhf(inner));
  }
  return 0.5f * v * (1.0f + erff(v * kGeluSqrtHalf));
}

// d gelu(v) / dv.
EF_HOST_DEVICE float gelu_derivative(float v, bool approximate) {
  if (approximate) {
    const float inner = kGeluSqrtTwoOverPi * (v + kGeluCubic * v * v * v);
    const float t = tanhf(inner);
    const float d_inner = kGeluSqrtTwoOverPi * (1.0f + 3.0f * kGeluCubic * v * v);
    return 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * d_inner;
  }
  const float cdf = 0.5f * (1.0f + erff(v * kGeluSqrtHalf));
  const float pdf = kGeluInvSqrtTwoPi * expf(-0.5f * v * v);
  return cdf + v * pdf;
}

// Validates the forward's arguments: x [..., N] contiguous float32/bfloat16/float16, bias
// contiguous float32 [N] on x's device.
void check_bias_gelu(const at::Tensor& x, const at::Tensor& bias);

// The backward's: grad of x's shape, dtype and device, and the forward's.
void check_bias_gelu_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& bias);

}  // namespace electra_fast
