// bias_gelu on the CPU (bias_gelu.h), and the argument checks both devices share. The
// elementwise parts are ATen's gelu and gelu_backward in float32 (vectorised with SLEEF's erf and
// tanh, which a plain loop here would not be); the bias gradient is summed over fixed blocks of
// rows and then over the blocks in order, so that it does not depend on the number of threads.
#include "bias_gelu.h"

#include <ATen/ops/add.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/gelu_backward.h>
#include <torch/library.h>

#include <tuple>

#include "block_sums.h"
#include "checks.h"

namespace electra_fast {

void check_bias_gelu(const at::Tensor& x, const at::Tensor& bias) {
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) >= 1, "x must have a last dimension, got shape ",
                    x.sizes());
  EF_CHECK_CONTIGUOUS(x);
  EF_CHECK_FLOATS(x);
  const int64_t N = x.size(-1);
  TORCH_CHECK_VALUE(bias.dim() == 1 && bias.size(0) == N && bias.scalar_type() == at::kFloat &&
                        bias.is_contiguous() && bias.device() == x.device(),
                    "bias must be contiguous float32 of shape [", N, "] on ", x.device(), ", got ",
                    bias.scalar_type(), " ", bias.sizes(), " on ", bias.device());
}

void check_bias_gelu_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& bias) {
  check_bias_gelu(x, bias);
  TORCH_CHECK_VALUE(grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type() &&
                        grad.device() == x.device(),
                    "grad must have x's shape ", x.sizes(), ", dtype ", x.scalar_type(),
                    " and device, got ", grad.sizes(), " ", grad.scalar_type(), " on ",
                    grad.device());
}

namespace {

const char* gelu_kind(bool approximate) { return approximate ? "tanh" : "none"; }

at::Tensor bias_gelu_cpu(const at::Tensor& x, const at::Tensor& bias, bool approximate) {
  check_bias_gelu(x, bias);
  return at::gelu(at::add(x.to(at::kFloat), bias), gelu_kind(approximate)).to(x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> bias_gelu_backward_cpu(const at::Tensor& grad,
                                                          const at::Tensor& x,
                                                          const at::Tensor& bias,
                                                          bool approximate) {
  check_bias_gelu_backward(grad, x, bias);
  const at::Tensor dx = at::gelu_backward(grad.to(at::kFloat).contiguous(),
                                          at::add(x.to(at::kFloat), bias), gelu_kind(approximate));
  const int64_t N = x.size(-1), M = x.numel() / N;
  return {dx.to(x.scalar_type()), column_sums_in_blocks(dx.const_data_ptr<float>(), M, N)};
}

}  // namespace

TORCH_LIBRARY_IMPL(electra_fast, CPU, m) {
  m.impl("bias_gelu", &bias_gelu_cpu);
  m.impl("bias_gelu_backward", &bias_gelu_backward_cpu);
}

}  // namespace electra_fast
