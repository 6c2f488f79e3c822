// Dtype dispatch shared by the ops.
#pragma once
#include <ATen/Dispatch.h>

// The floating dtypes the kernels take (float32, bfloat16, float16): no double instantiations
// nobody can call.
#define EF_DISPATCH_FLOATS(TYPE, NAME, ...)                                      \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                                 \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) AT_DISPATCH_CASE( \
                         at::kBFloat16, __VA_ARGS__) AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))
