// One wgmma tile on its own, for tests: D (64 x N, fp32) = A B with the operand layouts the
// Hopper attention kernels use, so that a GPU run can tell a descriptor or swizzle mistake in
// wgmma.cuh from a mistake in the attention kernels built on it. electra_fast_test::
// wgmma_matmul (schemas.cpp); tests/ops/test_wgmma.py holds it to torch's matmul.
//   mode 0: A stored [64][K], B stored [N][K], both K-major (as Q and K in S = Q K^T):
//           D = A B^T
//   mode 1: A stored [K][64], B stored [K][N], both MN-major (as P and dO in dV = P^T dO):
//           D = A^T B
//   mode 2: A [64][K] from registers, B stored [K][N] MN-major (as P and V in O = P V): D = A B
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "attention_tiles.cuh"
#include "tensor_core.cuh"
#include "wgmma.cuh"

namespace electra_fast {
namespace {

constexpr int kK = 128;  // two 64-column swizzle blocks: every descriptor step is exercised
constexpr int kThreads = 128;

template <typename T, int N, int Mode>
__global__ void __launch_bounds__(kThreads)
    wgmma_probe_kernel(const T* __restrict__ a, const T* __restrict__ b, float* __restrict__ d) {
#if !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();
#else
  __shared__ __align__(1024) unsigned char a_tile[64 * kK * 2];
  __shared__ __align__(1024) unsigned char b_tile[N * kK * 2];
  if constexpr (Mode == 0) {
    load_swizzled<T, kK, 64, kThreads>(a_tile, a, kK, 64, a);
    load_swizzled<T, kK, N, kThreads>(b_tile, b, kK, N, b);
  } else {
    if constexpr (Mode == 1) load_swizzled<T, 64, kK, kThreads>(a_tile, a, 64, kK, a);
    load_swizzled<T, N, kK, kThreads>(b_tile, b, N, kK, b);
  }
  cp_async_commit();
  cp_async_wait_all();
  fence_view_async_shared();
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const uint32_t a_address = shared_address(a_tile), b_address = shared_address(b_tile);
  float acc[N / 8][4] = {};
  uint32_t frag[kK / 16][4];
  if constexpr (Mode == 2) {  // this warp's 16 rows, as mma.sync A fragments
    const auto pair = [&](int row, int col) {
      return *reinterpret_cast<const uint32_t*>(a + row * kK + col);
    };
#pragma unroll
    for (int kk = 0; kk < kK / 16; ++kk) {
      const int row = warp * 16 + g, col = kk * 16 + 2 * t;
      frag[kk][0] = pair(row, col);
      frag[kk][1] = pair(row + 8, col);
      frag[kk][2] = pair(row, col + 8);
      frag[kk][3] = pair(row + 8, col + 8);
    }
  }
  fence_accumulators(acc);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < kK / 16; ++kk) {
    if constexpr (Mode == 0) {  // +32 bytes per k step within a 64-column block, then a block
      const uint32_t within = (kk % 4) * 32, block = kk / 4;
      wgmma_ss<T, N>(
          acc, swizzled_descriptor(a_address + block * 64 * kRowBytes + within, 16, 1024),
          swizzled_descriptor(b_address + block * N * kRowBytes + within, 16, 1024), true);
    } else {  // 16 rows of the reduction dim per k step; LBO to the next 64 columns
      const uint32_t rows = kk * 16 * kRowBytes, lead = kK * kRowBytes;
      const uint64_t bd = swizzled_descriptor(b_address + rows, lead, 1024);
      if constexpr (Mode == 1) {
        wgmma_ss<T, N, 1, 1>(acc, swizzled_descriptor(a_address + rows, lead, 1024), bd, true);
      } else {
        wgmma_rs<T, N>(acc, frag[kk], bd);
      }
    }
  }
  wgmma_commit();
  wgmma_wait<0>();
  fence_accumulators(acc);
#pragma unroll
  for (int nt = 0; nt < N / 8; ++nt) {
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      d[(warp * 16 + g + 8 * (c / 2)) * N + nt * 8 + 2 * t + (c & 1)] = acc[nt][c];
    }
  }
#endif
}

at::Tensor wgmma_matmul_cuda(const at::Tensor& a, const at::Tensor& b, int64_t mode) {
  TORCH_CHECK_VALUE(mode >= 0 && mode <= 2, "wgmma_matmul: mode must be 0, 1 or 2, got ", mode);
  TORCH_CHECK_VALUE(a.scalar_type() == b.scalar_type(), "wgmma_matmul: a and b differ in dtype");
  TORCH_CHECK_VALUE(a.is_contiguous() && b.is_contiguous() && a.dim() == 2 && b.dim() == 2,
                    "wgmma_matmul: a and b must be contiguous matrices");
  const bool mn_major_a = mode == 1, k_major_b = mode == 0;
  TORCH_CHECK_VALUE(a.size(0) == (mn_major_a ? kK : 64) && a.size(1) == (mn_major_a ? 64 : kK),
                    "wgmma_matmul: a must be ", mn_major_a ? "[128, 64]" : "[64, 128]", ", got ",
                    a.sizes());
  const int64_t n = k_major_b ? b.size(0) : b.size(1);
  TORCH_CHECK_VALUE((n == 64 || n == 128) && (k_major_b ? b.size(1) : b.size(0)) == kK,
                    "wgmma_matmul: b must be ", k_major_b ? "[N, 128]" : "[128, N]",
                    " with N 64 or 128, got ", b.sizes());
  const c10::cuda::CUDAGuard guard(a.device());
  int major = 0, minor = 0;
  C10_CUDA_CHECK(
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, a.device().index()));
  C10_CUDA_CHECK(
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, a.device().index()));
#if !defined(ELECTRA_FAST_SM90A)
  major = 0;  // no sm_90a code in this build: every device is refused
#endif
  TORCH_CHECK(major == 9 && minor == 0,
              "wgmma_matmul needs an sm_90a build and a compute capability 9.0 device");
  at::Tensor d = at::empty({64, n}, a.options().dtype(at::kFloat));
  dispatch_wgmma_kernel(a.scalar_type(), n, "probe", [&]<typename T, int N>() {
    auto launch = [&](auto kernel) {
      kernel<<<1, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          data<const T>(a), data<const T>(b), d.mutable_data_ptr<float>());
    };
    if (mode == 0) launch(wgmma_probe_kernel<T, N, 0>);
    if (mode == 1) launch(wgmma_probe_kernel<T, N, 1>);
    if (mode == 2) launch(wgmma_probe_kernel<T, N, 2>);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return d;
}

}  // namespace

TORCH_LIBRARY_IMPL(electra_fast_test, CUDA, m) { m.impl("wgmma_matmul", &wgmma_matmul_cuda); }

}  // namespace electra_fast
