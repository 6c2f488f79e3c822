// The attention backward on CUDA (FlashAttention-2's): a block of 4 warps takes 64 keys of one
// (sequence, head), loops over the query tiles, recomputes P from the forward's lse, keeps dK and
// dV in registers and adds dQ into an fp32 buffer with atomics; up to 128 keys, a block of 8
// warps takes all of a sequence's keys and writes dQ itself. The forward, and what both share,
// are in attention.cu and attention_mma.cuh; the wgmma backward in attention_sm90_backward.cu.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <type_traits>

#include "../attention.h"
#include "attention_mma.cuh"
#include "attention_sm90.h"
#include "attention_tiles.cuh"
#include "pack8.cuh"
#include "tensor_core.cuh"

namespace electra_fast {
namespace {

// This warp's dQ strip (its 16 queries) over the block's (or the half's) 64 keys, dS K with dS
// straight from the registers, 16 columns at a time: fn(r, c, d0, d1) for each pair of values
// a thread holds, rows 16 hw + g + 8 r of the tile, columns c and c + 1, not yet scaled.
template <typename T, int D, typename Fn>
__device__ __forceinline__ void for_each_dq_pair(const uint32_t (&ds_frag)[4][4], const T* k_tile,
                                                 int lane, Fn&& fn) {
  using S = Shape<D>;
#pragma unroll
  for (int dp = 0; dp < S::kKSteps; ++dp) {
    float part[2][4] = {};
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      uint32_t b_frag[4];
      ldmatrix_x4_trans(b_frag, k_tile + (kk * 16 + lane % 8 + ((lane / 8) % 2) * 8) * S::kPitch +
                                    dp * 16 + (lane / 16) * 8);
      mma_16816<T>(part[0], ds_frag[kk], b_frag[0], b_frag[1]);
      mma_16816<T>(part[1], ds_frag[kk], b_frag[2], b_frag[3]);
    }
#pragma unroll
    for (int x = 0; x < 2; ++x) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        fn(r, (2 * dp + x) * 8 + 2 * (lane % 4), part[x][2 * r], part[x][2 * r + 1]);
      }
    }
  }
}

// Where a thread's dQ values (row 16 hw + g + 8 r, columns c, c + 1) wait in the fp32 hand-over
// between the halves of a kHalves = 2 block: a [64][D + 8] float array; the same thread of
// either half names the same place.
template <int D>
__device__ __forceinline__ float2* dq_share_at(float* share, int hw, int lane, int r, int c) {
  return reinterpret_cast<float2*>(share + (hw * 16 + lane / 4 + 8 * r) * (D + 8) + c);
}

// kHalves = 1: 4 warps take the 64 keys from blockIdx.y * 64 and add dQ into the fp32 sum
// `dq_sum` with atomics (other blocks add into the same rows). kHalves = 2, for max_seqlen <= 128:
// 8 warps in two halves of 4 take keys [0, 64) and [64, 128), every key of the sequence, so a
// query tile's dQ is complete inside the block: after the barrier that publishes P and dS, the
// second half has left its dQ strips (fp32) in shared memory, the first adds them to its own and
// writes `dq` itself, in T, zeros in padded rows. No fp32 buffer, no atomics, the same dq on
// every run. Each half runs the kHalves = 1 algorithm on its own K, V, P and dS tiles; Q, dO and
// the rows' lse and D_i are shared. A half with no keys (length <= 64) only keeps the barriers.
template <typename T, int D, int kHalves>
__global__ void __launch_bounds__(kThreads* kHalves)
    attention_backward_kernel(const AttentionParams p, const T* __restrict__ grad_out,
                              const T* __restrict__ q, const T* __restrict__ k,
                              const T* __restrict__ v, const float* __restrict__ lse,
                              const float* __restrict__ grad_dot_out, float* __restrict__ dq_sum,
                              T* __restrict__ dq, T* __restrict__ dk, T* __restrict__ dv) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  using S = Shape<D>;
  constexpr int kBlockThreads = kThreads * kHalves;
  constexpr int kHalfElements = 2 * kTile * S::kPitch + 2 * kTile * kScorePitch;
  extern __shared__ __align__(16) unsigned char shared[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int half = warp / 4, hw = warp % 4;  // the block's half, the warp within it
  T* q_tile = reinterpret_cast<T*>(shared);
  T* g_tile = q_tile + kTile * S::kPitch;  // dO
  T* k_tile = g_tile + kTile * S::kPitch + half * kHalfElements;
  T* v_tile = k_tile + kTile * S::kPitch;
  T* p_tile = v_tile + kTile * S::kPitch;  // P after dropout, [query][key]
  T* ds_tile = p_tile + kTile * kScorePitch;
  float* row_lse = reinterpret_cast<float*>(g_tile + kTile * S::kPitch + kHalves * kHalfElements);
  float* row_dot = row_lse + kTile;
  float* dq_share = row_dot + kTile;  // kHalves = 2: [64][D + 8]
  const int64_t bh = blockIdx.x, b = bh / p.heads, h = bh % p.heads, H = p.heads;
  const int n0 = (blockIdx.y * kHalves + half) * kTile;
  const SequenceBounds seq = sequence_bounds(p, b);
  const int length = static_cast<int>(seq.length);
  const int64_t head = h * D;
  const int64_t grad_stride = p.grad_row_stride;
  const int limit = rows_written(p, length);
  const bool has_keys = n0 < length;
  const bool second_has_keys = kHalves == 2 && kTile < length;

  float dk_acc[S::kDTiles][4] = {}, dv_acc[S::kDTiles][4] = {};
  // The first half's keys start the block's: if it has none, neither has the second.
  if (blockIdx.y * kHalves * kTile < length) {
    const int cols = has_keys ? min(kTile, length - n0) : 0;
    if (has_keys) {
      load_tile<T, D>(k_tile, k + (seq.start + n0) * p.k_row_stride + head, p.k_row_stride, cols, k,
                      threadIdx.x % kThreads);
      load_tile<T, D>(v_tile, v + (seq.start + n0) * p.v_row_stride + head, p.v_row_stride, cols, v,
                      threadIdx.x % kThreads);
    }
    cp_async_commit();
    const uint64_t seed = p.philox_key();
    for (int m0 = 0; m0 < length; m0 += kTile) {
      const int rows = min(kTile, length - m0);
      __syncthreads();  // every warp is done with the previous query tile
      load_tile<T, D, kBlockThreads>(q_tile, q + (seq.start + m0) * p.q_row_stride + head,
                                     p.q_row_stride, rows, q, threadIdx.x);
      load_tile<T, D, kBlockThreads>(g_tile, grad_out + (seq.start + m0) * H * D + head, H * D,
                                     rows, grad_out, threadIdx.x);
      cp_async_commit();
      for (int i = threadIdx.x; i < kTile; i += kBlockThreads) {
        const int64_t at = (seq.start + m0 + i) * H + h;
        row_lse[i] = i < rows ? lse[at] * kLog2e : kInf;  // P = 0 on padded query rows
        row_dot[i] = i < rows ? grad_dot_out[at] : 0.0f;
      }
      cp_async_wait_all();
      __syncthreads();

      // This warp's 16 queries against the half's 64 keys: S = Q K^T and dP = dO V^T.
      const int r0 = hw * 16 + g;
      uint32_t ds_frag[4][4];  // dS as A fragments, for dQ
      if (has_keys) {
        float s[8][4] = {}, d_p[8][4] = {};
        strip_times_transposed<T, D>(s, q_tile, k_tile, hw, lane);
        strip_times_transposed<T, D>(d_p, g_tile, v_tile, hw, lane);
        const float lse_r[2] = {row_lse[r0], row_lse[r0 + 8]};
        const float dot_r[2] = {row_dot[r0], row_dot[r0 + 8]};
        const uint32_t keep =
            p.dropout() ? dropout_keep_bits(seed, bh, m0 + r0, n0, p.drop_threshold, lane) : ~0u;
        probabilities_and_score_grads(s, d_p, cols, p.scale_log2, lse_r, dot_r, keep, p.keep_scale,
                                      t);
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
          const int col = nt * 8 + 2 * t;
          *reinterpret_cast<uint32_t*>(p_tile + r0 * kScorePitch + col) =
              pack2<T>(s[nt][0], s[nt][1]);
          *reinterpret_cast<uint32_t*>(p_tile + (r0 + 8) * kScorePitch + col) =
              pack2<T>(s[nt][2], s[nt][3]);
          *reinterpret_cast<uint32_t*>(ds_tile + r0 * kScorePitch + col) =
              pack2<T>(d_p[nt][0], d_p[nt][1]);
          *reinterpret_cast<uint32_t*>(ds_tile + (r0 + 8) * kScorePitch + col) =
              pack2<T>(d_p[nt][2], d_p[nt][3]);
        }
        accumulators_to_a<T>(d_p, ds_frag);
      }
      if (has_keys && kHalves == 1) {
        for_each_dq_pair<T, D>(ds_frag, k_tile, lane, [&](int r, int c, float d0, float d1) {
          const int row = m0 + r0 + 8 * r;
          if (row >= length) return;
          float* dst = dq_sum + ((seq.start + row) * H + h) * D + c;
#if __CUDA_ARCH__ >= 900
          // 8-byte float atomics (sm_90 on): half the atomic instructions of two scalar ones.
          atomicAdd(reinterpret_cast<float2*>(dst), make_float2(d0 * p.scale, d1 * p.scale));
#else
          atomicAdd(dst, d0 * p.scale);
          atomicAdd(dst + 1, d1 * p.scale);
#endif
        });
      } else if (has_keys && half == 1) {  // the unscaled sum, for the first half to add
        for_each_dq_pair<T, D>(ds_frag, k_tile, lane, [&](int r, int c, float d0, float d1) {
          *dq_share_at<D>(dq_share, hw, lane, r, c) = make_float2(d0, d1);
        });
      }
      __syncthreads();  // P and dS of every warp are in shared memory, and the second half's dQ

      if (kHalves == 2 && half == 0) {
        // dq rows m0 + r0 (+8): the first half's sum, the second's added, in T; padded rows in
        // this tile get zeros. (The first half always has keys: the loop runs only then.)
        T* dq_rows = dq + seq.start * grad_stride + head;
        for_each_dq_pair<T, D>(ds_frag, k_tile, lane, [&](int r, int c, float d0, float d1) {
          const int row = m0 + r0 + 8 * r;
          if (row >= limit) return;
          if (second_has_keys) {
            const float2 other = *dq_share_at<D>(dq_share, hw, lane, r, c);
            d0 += other.x;
            d1 += other.y;
          }
          *reinterpret_cast<uint32_t*>(dq_rows + row * grad_stride + c) =
              row < length ? pack2<T>(d0 * p.scale, d1 * p.scale) : 0u;
        });
      }
      if (has_keys) {
        // dV += P^T dO and dK += dS^T Q for this warp's 16 keys: the A fragments (keys x
        // queries) are the stored [query][key] tiles read transposed.
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          // Matrices: (queries +0, keys +0), (queries +0, keys +8), (queries +8, keys +0), ...
          const int at =
              (kk * 16 + lane % 8 + (lane / 16) * 8) * kScorePitch + hw * 16 + ((lane / 8) % 2) * 8;
          uint32_t p_frag[4], ds_t_frag[4];
          ldmatrix_x4_trans(p_frag, p_tile + at);
          ldmatrix_x4_trans(ds_t_frag, ds_tile + at);
          a_times_tile<T, D>(dv_acc, p_frag, g_tile, kk * 16, lane);
          a_times_tile<T, D>(dk_acc, ds_t_frag, q_tile, kk * 16, lane);
        }
      }
    }
  }
  if constexpr (kHalves == 2) {
    // Padded query rows of tiles the loop never reached (all of them for an empty sequence).
    const int first_unvisited = (length + kTile - 1) / kTile * kTile;
    T* dq_rows = dq + seq.start * grad_stride + head;
    for (int idx = threadIdx.x; idx < (limit - first_unvisited) * S::kChunks;
         idx += kBlockThreads) {
      const int row = first_unvisited + idx / S::kChunks, c = idx % S::kChunks;
      *reinterpret_cast<uint4*>(dq_rows + row * grad_stride + c * 8) = make_uint4(0, 0, 0, 0);
    }
  }
  __syncthreads();  // the K and V tiles become staging space
  const int first_row = n0 + hw * 16;
  const float dk_factor[2] = {p.scale, p.scale}, dv_factor[2] = {p.keep_scale, p.keep_scale};
  store_rows<T, D>(dk_acc, dk_factor, k_tile + hw * 16 * S::kPitch,
                   dk + seq.start * grad_stride + head, grad_stride, first_row, length, limit,
                   lane);
  store_rows<T, D>(dv_acc, dv_factor, v_tile + hw * 16 * S::kPitch,
                   dv + seq.start * grad_stride + head, grad_stride, first_row, length, limit,
                   lane);
#endif
}

// D_i = rowsum(dO * O) (attention.h) of `pairs` (row, head) pairs of D elements each, dO and O
// contiguous: D / 8 lanes per pair, one 16-byte load of each per lane, a shuffle sum over the
// lanes. One read of dO and O; the ATen ops it replaces read and wrote fp32 copies of both.
template <typename T, int D>
__global__ void __launch_bounds__(256)
    grad_dot_out_kernel(const T* __restrict__ grad, const T* __restrict__ out,
                        float* __restrict__ result, int64_t pairs) {
  constexpr int kLanes = D / 8;
  static_assert(kLanes <= 32 && (kLanes & (kLanes - 1)) == 0, "lanes of a pair: a power of two");
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t pair = thread / kLanes;
  const int part = static_cast<int>(thread % kLanes);
  float sum = 0.0f;
  if (pair < pairs) {
    float g[8], o[8];
    load8(grad + pair * D + part * 8, g);
    load8(out + pair * D + part * 8, o);
#pragma unroll
    for (int i = 0; i < 8; ++i) sum = fmaf(g[i], o[i], sum);
  }
  // Every lane of the warp shuffles, those past the last pair with 0: the mask is the full warp.
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset /= 2) {
    sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  }
  if (pair < pairs && part == 0) result[pair] = sum;
}

at::Tensor attention_grad_dot_out_cuda(const AttentionBackwardCall& b) {
  const at::Tensor& grad = b.grad_out;
  at::Tensor result =
      at::empty(grad.sizes().slice(0, grad.dim() - 1), grad.options().dtype(at::kFloat));
  const int64_t pairs = result.numel();
  if (pairs == 0) return result;
  dispatch_kernel(grad.scalar_type(), grad.size(-1), [&]<typename CudaT, int D>() {
    // ATen's element types, which convert to float on the device (the extension is built with
    // the CUDA types' own conversions turned off, as torch is).
    using T = std::conditional_t<std::is_same_v<CudaT, __half>, c10::Half, c10::BFloat16>;
    constexpr int kBlock = 256;
    const int64_t blocks = (pairs * (D / 8) + kBlock - 1) / kBlock;
    grad_dot_out_kernel<T, D>
        <<<static_cast<unsigned>(blocks), kBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
            data<const T>(grad), data<const T>(b.out), result.mutable_data_ptr<float>(), pairs);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return result;
}

// Q and dO; K, V, P and dS per half; the rows' lse and D_i; with two halves, the dQ hand-over.
template <int D, int kHalves>
constexpr size_t backward_shared_bytes() {
  constexpr int kPitch = Shape<D>::kPitch;
  return (2 * kTile * kPitch + kHalves * (2 * kTile * kPitch + 2 * kTile * kScorePitch)) * 2 +
         2 * kTile * sizeof(float) + (kHalves == 2 ? kTile * (D + 8) * sizeof(float) : 0);
}

// The shared memory a block of this device may be given (99 KB on sm_86 and sm_89, 163 KB on
// sm_80, 227 KB on sm_90).
size_t shared_bytes_allowed(const at::Tensor& q) {
  int bytes = 0;
  C10_CUDA_CHECK(
      cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, q.device().index()));
  return static_cast<size_t>(bytes);
}

template <typename T, int D, int kHalves>
void launch_backward(const AttentionBackwardCall& b, float* dq_sum, T* dq, const at::Tensor& dk,
                     const at::Tensor& dv) {
  const AttentionCall& call = b.call;
  const AttentionParams& p = call.params;
  auto kernel = attention_backward_kernel<T, D, kHalves>;
  constexpr size_t bytes = backward_shared_bytes<D, kHalves>();
  allow_shared_bytes(kernel, bytes);
  kernel<<<grid_of(p, kTile * kHalves), kThreads * kHalves, bytes,
           c10::cuda::getCurrentCUDAStream()>>>(
      p, data<const T>(b.grad_out), data<const T>(call.q), data<const T>(call.k),
      data<const T>(call.v), b.lse.const_data_ptr<float>(), b.grad_dot_out.const_data_ptr<float>(),
      dq_sum, dq, data<T>(dk), data<T>(dv));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Runs `add`, which adds dQ into the zeroed fp32 sum it is given, then casts the sum into dq.
template <typename Fn>
void through_dq_sum(const at::Tensor& q, const at::Tensor& dq, Fn&& add) {
  at::Tensor dq_sum = at::zeros(q.sizes(), q.options().dtype(at::kFloat));
  add(dq_sum);
  dq.copy_(dq_sum);
}

// The backward kernels over a prepared call (a RunAttentionBackward, attention.h). Sequences of
// at most 128 keys take the kernels that write dq (the wgmma one, or the sm80 one in two halves
// where the device gives a block its shared memory); longer ones add dq into an fp32 sum with
// atomics, which is then cast into `dq`.
void run_backward_cuda(AttentionBackwardCall& b, const at::Tensor& dq, const at::Tensor& dk,
                       const at::Tensor& dv) {
  const AttentionCall& call = b.call;
  const AttentionParams& p = call.params;
  const at::Tensor& q = call.q;
  check_device(q);
  if (p.batch == 0 || p.total_rows == 0) {
    dq.zero_();
    return;
  }
  b.grad_dot_out = attention_grad_dot_out_cuda(b);
  if (attention_sm90_applies(q, p.head_dim)) {
    if (attention_sm90_backward_writes_dq(p)) {
      attention_backward_sm90(b, dq, dk, dv);
    } else {
      through_dq_sum(q, dq,
                     [&](const at::Tensor& sum) { attention_backward_sm90(b, sum, dk, dv); });
    }
    return;
  }
  dispatch_kernel(q.scalar_type(), p.head_dim, [&]<typename T, int D>() {
    if (p.max_seqlen <= 2 * kTile && backward_shared_bytes<D, 2>() <= shared_bytes_allowed(q)) {
      launch_backward<T, D, 2>(b, nullptr, data<T>(dq), dk, dv);
    } else {
      through_dq_sum(q, dq, [&](const at::Tensor& sum) {
        launch_backward<T, D, 1>(b, sum.mutable_data_ptr<float>(), nullptr, dk, dv);
      });
    }
  });
}

AttentionGrads attention_backward_cuda(const at::Tensor& grad_out, const at::Tensor& q,
                                       const at::Tensor& k, const at::Tensor& v,
                                       const at::Tensor& out, const at::Tensor& lse,
                                       const c10::optional<at::Tensor>& lengths,
                                       const c10::optional<at::Tensor>& cu_seqlens,
                                       int64_t max_seqlen, const c10::optional<at::Tensor>& seed,
                                       double dropout_p, double softmax_scale) {
  const c10::cuda::CUDAGuard guard(q.device());
  return attention_backward_with(run_backward_cuda, grad_out, q, k, v, out, lse, lengths,
                                 cu_seqlens, max_seqlen, seed, dropout_p, softmax_scale);
}

at::Tensor attention_qkv_backward_cuda(const at::Tensor& grad_out, const at::Tensor& qkv,
                                       const at::Tensor& out, const at::Tensor& lse,
                                       const c10::optional<at::Tensor>& lengths,
                                       const c10::optional<at::Tensor>& cu_seqlens,
                                       int64_t max_seqlen, const c10::optional<at::Tensor>& seed,
                                       double dropout_p, double softmax_scale) {
  const c10::cuda::CUDAGuard guard(qkv.device());
  return attention_qkv_backward_with(run_backward_cuda, grad_out, qkv, out, lse, lengths,
                                     cu_seqlens, max_seqlen, seed, dropout_p, softmax_scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(electra_fast, CUDA, m) {
  m.impl("attention_backward", &attention_backward_cuda);
  m.impl("attention_qkv_backward", &attention_qkv_backward_cuda);
}

}  // namespace electra_fast
