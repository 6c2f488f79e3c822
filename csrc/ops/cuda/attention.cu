// Attention on CUDA, flash style (Dao, "FlashAttention-2", 2023): a block of 4 warps takes 64
// queries of one (sequence, head) against tiles of 64 keys with an online softmax; S = QK^T and
// O += PV run on mma.sync tensor cores with fp32 accumulators, P staying in registers between
// the two. Tiles past a sequence's length are never visited, so padding costs nothing but the
// zeros written to its rows. The backward is in attention_backward.cu. The CPU twin
// (../attention.cpp) runs the same algorithm; semantics and the dropout stream are in
// ../attention.h.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../attention.h"
#include "attention_mma.cuh"
#include "attention_sm90.h"
#include "attention_tiles.cuh"
#include "tensor_core.cuh"

namespace electra_fast {
namespace {

template <typename T, int D>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(const AttentionParams p, const T* __restrict__ q,
                             const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ out,
                             float* __restrict__ lse) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // the host refuses these devices; mma.sync on bf16 needs sm80
#else
  using S = Shape<D>;
  extern __shared__ __align__(16) unsigned char shared[];
  T* q_tile = reinterpret_cast<T*>(shared);
  T* k_tile = q_tile + kTile * S::kPitch;
  T* v_tile = k_tile + kTile * S::kPitch;
  const int64_t bh = blockIdx.x, b = bh / p.heads, h = bh % p.heads;
  const int m0 = blockIdx.y * kTile;
  const SequenceBounds seq = sequence_bounds(p, b);
  const int length = static_cast<int>(seq.length);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t head = h * D;
  const int first_row = m0 + warp * 16;  // this warp's first query

  float acc[S::kDTiles][4] = {};
  float row_max[2] = {-kInf, -kInf}, row_sum[2] = {0.0f, 0.0f};
  if (m0 < length) {
    load_tile<T, D>(q_tile, q + (seq.start + m0) * p.q_row_stride + head, p.q_row_stride,
                    min(kTile, length - m0), q, threadIdx.x);
    load_tile<T, D>(k_tile, k + seq.start * p.k_row_stride + head, p.k_row_stride,
                    min(kTile, length), k, threadIdx.x);
    cp_async_commit();
    const uint64_t seed = p.philox_key();
    uint32_t q_frag[S::kKSteps][4];
    const int tiles = (length + kTile - 1) / kTile;
    for (int tile = 0; tile < tiles; ++tile) {
      const int n0 = tile * kTile, cols = min(kTile, length - n0);
      cp_async_wait_all();
      __syncthreads();  // K (and Q) arrived; every warp is done with the previous V
      load_tile<T, D>(v_tile, v + (seq.start + n0) * p.v_row_stride + head, p.v_row_stride, cols, v,
                      threadIdx.x);
      cp_async_commit();
      if (tile == 0) {
#pragma unroll
        for (int kk = 0; kk < S::kKSteps; ++kk) {
          ldmatrix_x4(q_frag[kk],
                      q_tile + (warp * 16 + lane % 16) * S::kPitch + kk * 16 + (lane / 16) * 8);
        }
      }
      float s[8][4] = {};
#pragma unroll
      for (int kk = 0; kk < S::kKSteps; ++kk) {
#pragma unroll
        for (int np = 0; np < 4; ++np) {
          uint32_t b_frag[4];
          ldmatrix_x4(b_frag, k_tile + (np * 16 + lane % 8 + (lane / 16) * 8) * S::kPitch +
                                  kk * 16 + ((lane / 8) % 2) * 8);
          mma_16816<T>(s[2 * np], q_frag[kk], b_frag[0], b_frag[1]);
          mma_16816<T>(s[2 * np + 1], q_frag[kk], b_frag[2], b_frag[3]);
        }
      }
      float correction[2];
      online_softmax(s, row_max, row_sum, correction, cols, p.scale_log2, t);
      scale_rows(acc, correction);
      if (p.dropout()) drop_probabilities(s, p, seed, bh, first_row + g, n0, lane);
      uint32_t p_frag[4][4];
      accumulators_to_a<T>(s, p_frag);
      cp_async_wait_all();
      __syncthreads();  // V arrived; every warp is done with K
      if (tile + 1 < tiles) {
        load_tile<T, D>(k_tile, k + (seq.start + n0 + kTile) * p.k_row_stride + head,
                        p.k_row_stride, min(kTile, length - n0 - kTile), k, threadIdx.x);
        cp_async_commit();
      }
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) a_times_tile<T, D>(acc, p_frag[kk], v_tile, kk * 16, lane);
    }
  }
  float factor[2], row_lse[2];
  finish_softmax(row_max, row_sum, p.keep_scale, factor, row_lse);
  // Each warp stages its rows in its own rows of the Q tile, which only it has read.
  const int limit = rows_written(p, length);
  store_rows<T, D>(acc, factor, q_tile + warp * 16 * S::kPitch,
                   out + seq.start * p.heads * D + head, p.heads * D, first_row, length, limit,
                   lane);
  store_lse(lse + seq.start * p.heads + h, p.heads, row_lse, first_row, length, limit, lane);
#endif
}

template <int D>
constexpr size_t forward_shared_bytes() {
  return 3 * kTile * Shape<D>::kPitch * 2;
}

std::tuple<at::Tensor, at::Tensor> attention_forward_cuda(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& cu_seqlens,
    int64_t max_seqlen, const c10::optional<at::Tensor>& seed, double dropout_p,
    double softmax_scale) {
  const c10::cuda::CUDAGuard guard(q_in.device());
  const AttentionCall call = prepare_attention(q_in, k_in, v_in, lengths, cu_seqlens, max_seqlen,
                                               seed, dropout_p, softmax_scale);
  const AttentionParams& p = call.params;
  const at::Tensor& q = call.q;
  check_device(q);
  at::Tensor out = new_attention_result(call, q.scalar_type());
  at::Tensor lse = new_attention_lse(call);
  if (p.batch == 0 || p.total_rows == 0) return {out, lse};
  if (attention_sm90_applies(q, p.head_dim)) {
    attention_forward_sm90(call, out, lse);
    return {out, lse};
  }
  dispatch_kernel(q.scalar_type(), p.head_dim, [&]<typename T, int D>() {
    auto kernel = attention_forward_kernel<T, D>;
    allow_shared_bytes(kernel, forward_shared_bytes<D>());
    kernel<<<grid_of(p, kTile), kThreads, forward_shared_bytes<D>(),
             c10::cuda::getCurrentCUDAStream()>>>(p, data<const T>(q), data<const T>(call.k),
                                                  data<const T>(call.v), data<T>(out),
                                                  lse.mutable_data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> attention_qkv_forward_cuda(
    const at::Tensor& qkv, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen,
    const c10::optional<at::Tensor>& seed, double dropout_p, double softmax_scale) {
  const auto [q, k, v] = unpack_qkv(qkv, cu_seqlens.has_value());
  return attention_forward_cuda(q, k, v, lengths, cu_seqlens, max_seqlen, seed, dropout_p,
                                softmax_scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(electra_fast, CUDA, m) {
  m.impl("attention_forward", &attention_forward_cuda);
  m.impl("attention_qkv_forward", &attention_qkv_forward_cuda);
}

}  // namespace electra_fast
