// Argument checks at the op boundary. Each message names the argument and says what was wrong.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#define EF_CHECK_DEVICE(x, expected_device)                                                  \
  TORCH_CHECK_VALUE((x).device() == (expected_device), #x " must be on ", (expected_device), \
                    " like the other inputs, got ", (x).device())
#define EF_CHECK_DIM(x, n) \
  TORCH_CHECK_VALUE((x).dim() == (n), #x " must have ", (n), " dimensions, got shape ", (x).sizes())
#define EF_CHECK_SHAPE(x, ...)                                                             \
  TORCH_CHECK_VALUE((x).sizes() == at::IntArrayRef({__VA_ARGS__}), #x " must have shape ", \
                    at::IntArrayRef({__VA_ARGS__}), ", got ", (x).sizes())
#define EF_CHECK_CONTIGUOUS(x) TORCH_CHECK_VALUE((x).is_contiguous(), #x " must be contiguous")
#define EF_CHECK_DTYPE(x, cond, expected) \
  TORCH_CHECK_TYPE((cond), #x " must be ", expected, ", got ", (x).scalar_type())
// The floating-point dtypes of the elementwise kernels.
#define EF_CHECK_FLOATS(x)                                                                \
  EF_CHECK_DTYPE(x,                                                                       \
                 (x).scalar_type() == at::kFloat || (x).scalar_type() == at::kBFloat16 || \
                     (x).scalar_type() == at::kHalf,                                      \
                 "float32, bfloat16 or float16")
