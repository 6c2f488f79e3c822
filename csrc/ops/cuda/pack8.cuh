// Eight consecutive elements converted to and from float: one 16-byte load or store for 2-byte
// types, two for float. The address must be 16-byte aligned (aligned16 checks tensors on the
// host). load_group and store_group take kWidth elements: load8/store8 when kWidth is 8, else
// one by one.
#pragma once
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>

namespace electra_fast {

// Whether every tensor's data starts on a 16-byte boundary, as load8 and store8 need.
inline bool aligned16(std::initializer_list<const at::Tensor*> tensors) {
  return std::all_of(tensors.begin(), tensors.end(), [](const at::Tensor* t) {
    return reinterpret_cast<uintptr_t>(t->const_data_ptr()) % 16 == 0;
  });
}

// Whether rows of N elements can be read 8 at a time: whole 8-element groups in 16-byte
// aligned tensors.
inline bool vector_path(int64_t N, std::initializer_list<const at::Tensor*> tensors) {
  return N % 8 == 0 && aligned16(tensors);
}

template <typename T>
struct alignas(16) Pack8 {
  T v[8];
};

template <typename T>
__device__ __forceinline__ void load8(const T* p, float (&out)[8]) {
  const Pack8<T> pack = *reinterpret_cast<const Pack8<T>*>(p);
#pragma unroll
  for (int i = 0; i < 8; ++i) out[i] = static_cast<float>(pack.v[i]);
}

template <typename T>
__device__ __forceinline__ void store8(T* p, const float (&in)[8]) {
  Pack8<T> pack;
#pragma unroll
  for (int i = 0; i < 8; ++i) pack.v[i] = static_cast<T>(in[i]);
  *reinterpret_cast<Pack8<T>*>(p) = pack;
}

template <int kWidth, typename T>
__device__ __forceinline__ void load_group(const T* p, float (&out)[kWidth]) {
  if constexpr (kWidth == 8) {
    load8(p, out);
  } else {
#pragma unroll
    for (int i = 0; i < kWidth; ++i) out[i] = static_cast<float>(p[i]);
  }
}

template <int kWidth, typename T>
__device__ __forceinline__ void store_group(T* p, const float (&in)[kWidth]) {
  if constexpr (kWidth == 8) {
    store8(p, in);
  } else {
#pragma unroll
    for (int i = 0; i < kWidth; ++i) p[i] = static_cast<T>(in[i]);
  }
}

}  // namespace electra_fast
