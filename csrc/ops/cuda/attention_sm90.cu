// The attention forward on Hopper with wgmma (sm_90a). A block of two warpgroups takes 128
// queries of one (sequence, head), 64 per warpgroup, against tiles of 128 keys: S = Q K^T with
// Q and K in shared memory, the online softmax and dropout in registers (attention_tiles.cuh,
// as in the sm80 kernel), then O += P V with P straight from the registers as the A operand.
// K and V tiles are double-buffered with cp.async: the next tile loads while this one computes.
// Tiles past a sequence's length are never loaded or computed, and a warpgroup whose 64
// queries all lie past it sits the loop out. Results and lse are those of the sm80 kernel, so
// either backward (attention_sm90_backward.cu, or the sm80 one) takes them;
// ELECTRA_FAST_WGMMA=1 picks this.
//
// Not yet here (FlashAttention-3's further steps): a producer warp with TMA loads, ping-pong
// scheduling of the two warpgroups, and overlapping one tile's softmax with the next's matmuls.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdlib>
#include <string_view>

#include "attention_sm90.h"
#include "attention_tiles.cuh"
#include "tensor_core.cuh"
#include "wgmma.cuh"

namespace electra_fast {
namespace {

constexpr int kGroups = 2;  // warpgroups per block
constexpr int kThreads = 128 * kGroups;
constexpr int kQueries = 64 * kGroups;  // per block
constexpr int kKeys = 128;              // per tile

template <int D>
struct Sm90Layout {
  static constexpr int kQBytes = kQueries * D * 2;
  static constexpr int kKVBytes = kKeys * D * 2;
  // Q, then K of stages 0 and 1, then V of stages 0 and 1; every tile 1024-byte aligned.
  static constexpr int kBytes = kQBytes + 4 * kKVBytes;
  static constexpr size_t kSharedBytes = kBytes + 1024;  // room to align the base
  // After the loop the K and V tiles hold each warp's 16 staged output rows.
  static_assert(kGroups * 4 * 16 * Shape<D>::kPitch * 2 <= 4 * kKVBytes);
};

template <typename T, int D>
__global__ void __launch_bounds__(kThreads, 1)
    attention_forward_sm90_kernel(const AttentionParams p, const T* __restrict__ q,
                                  const T* __restrict__ k, const T* __restrict__ v,
                                  T* __restrict__ out, float* __restrict__ lse) {
#if !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // launched only by a build with sm_90a code, on a 9.0 device
#else
  using L = Sm90Layout<D>;
  using S = Shape<D>;
  extern __shared__ unsigned char shared_raw[];
  unsigned char* const q_tile =
      shared_raw + ((1024u - (shared_address(shared_raw) & 1023u)) & 1023u);
  unsigned char* const k_tiles = q_tile + L::kQBytes;  // stage s at s * kKVBytes
  unsigned char* const v_tiles = k_tiles + 2 * L::kKVBytes;
  const uint32_t q_address = shared_address(q_tile);
  const uint32_t k_address = shared_address(k_tiles), v_address = shared_address(v_tiles);

  const int64_t bh = blockIdx.x, b = bh / p.heads, h = bh % p.heads;
  const int m0 = blockIdx.y * kQueries;
  const SequenceBounds seq = sequence_bounds(p, b);
  const int length = static_cast<int>(seq.length);
  const int group = threadIdx.x / 128, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int group_row0 = m0 + group * 64;
  const bool group_active = group_row0 < length;       // the same for the whole warpgroup
  const int first_row = group_row0 + (warp % 4) * 16;  // this warp's first query
  const int tiles = m0 < length ? (length + kKeys - 1) / kKeys : 0;
  const int64_t head = h * D;

  auto load_keys_and_values = [&](int tile, int stage) {
    const int n0 = tile * kKeys;
    const int rows = min(kKeys, length - n0);
    load_swizzled<T, D, kKeys, kThreads>(k_tiles + stage * L::kKVBytes,
                                         k + (seq.start + n0) * p.k_row_stride + head,
                                         p.k_row_stride, rows, k);
    load_swizzled<T, D, kKeys, kThreads>(v_tiles + stage * L::kKVBytes,
                                         v + (seq.start + n0) * p.v_row_stride + head,
                                         p.v_row_stride, rows, v);
  };
  if (tiles > 0) {
    load_swizzled<T, D, kQueries, kThreads>(q_tile, q + (seq.start + m0) * p.q_row_stride + head,
                                            p.q_row_stride, min(kQueries, length - m0), q);
    load_keys_and_values(0, 0);
    cp_async_commit();
  }

  float o[S::kDTiles][4] = {};
  float row_max[2] = {-kInf, -kInf}, row_sum[2] = {0.0f, 0.0f};
  const uint64_t seed = p.philox_key();
  for (int tile = 0; tile < tiles; ++tile) {
    const int stage = tile & 1, n0 = tile * kKeys, cols = min(kKeys, length - n0);
    next_double_buffered_tile(tile, tiles, load_keys_and_values);
    if (!group_active) continue;

    // S = Q K^T over D in k steps of 16: +32 bytes within a 64-column block, then the next block.
    float s[kKeys / 8][4] = {};  // the first k step overwrites it; defined for the compiler
    fence_accumulators(s);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t within = (kk % 4) * 32, block = kk / 4;
      const uint64_t a = swizzled_descriptor(
          q_address + block * kQueries * kRowBytes + group * 64 * kRowBytes + within, 16, 1024);
      const uint64_t bk = swizzled_descriptor(
          k_address + stage * L::kKVBytes + block * kKeys * kRowBytes + within, 16, 1024);
      wgmma_ss<T, kKeys>(s, a, bk, kk > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_accumulators(s);

    float correction[2];
    online_softmax(s, row_max, row_sum, correction, cols, p.scale_log2, t);
    scale_rows(o, correction);
    if (p.dropout()) {
      drop_probabilities(s, p, seed, bh, first_row + g, n0, lane);
    }
    uint32_t p_frag[kKeys / 16][4];
    accumulators_to_a<T>(s, p_frag);

    // O += P V over the tile's keys in k steps of 16 (16 rows of V: 2048 bytes).
    wgmma_fence();
    fence_accumulators(o);
#pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
      const uint64_t bv = swizzled_descriptor(v_address + stage * L::kKVBytes + kk * 16 * kRowBytes,
                                              kKeys * kRowBytes, 1024);
      wgmma_rs<T, D>(o, p_frag[kk], bv);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_accumulators(o);
  }

  float factor[2], row_lse[2];
  finish_softmax(row_max, row_sum, p.keep_scale, factor, row_lse);
  __syncthreads();  // every warpgroup is done with K and V: they become staging space
  const int limit = rows_written(p, length);
  store_rows<T, D>(o, factor, reinterpret_cast<T*>(k_tiles) + warp * 16 * S::kPitch,
                   out + seq.start * p.heads * D + head, p.heads * D, first_row, length, limit,
                   lane);
  store_lse(lse + seq.start * p.heads + h, p.heads, row_lse, first_row, length, limit, lane);
#endif
}

}  // namespace

bool attention_sm90_applies(const at::Tensor& q, int64_t head_dim) {
#if defined(ELECTRA_FAST_SM90A)
  const char* wanted = std::getenv("ELECTRA_FAST_WGMMA");
  if (wanted == nullptr || std::string_view(wanted) != "1") return false;
  if (head_dim != 64 && head_dim != 128) return false;
  int major = 0, minor = 0;
  C10_CUDA_CHECK(
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, q.device().index()));
  C10_CUDA_CHECK(
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, q.device().index()));
  return major == 9 && minor == 0;
#else
  (void)q;
  (void)head_dim;
  return false;
#endif
}

void attention_forward_sm90(const AttentionCall& call, at::Tensor& out, at::Tensor& lse) {
  const AttentionParams& p = call.params;
  dispatch_wgmma_kernel(call.q.scalar_type(), p.head_dim, "forward", [&]<typename T, int D>() {
    auto kernel = attention_forward_sm90_kernel<T, D>;
    constexpr size_t bytes = Sm90Layout<D>::kSharedBytes;
    allow_shared_bytes(kernel, bytes);
    kernel<<<grid_of(p, kQueries), kThreads, bytes, c10::cuda::getCurrentCUDAStream()>>>(
        p, data<const T>(call.q), data<const T>(call.k), data<const T>(call.v), data<T>(out),
        lse.mutable_data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace electra_fast
