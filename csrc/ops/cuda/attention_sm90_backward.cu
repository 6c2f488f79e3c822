// The attention backward on Hopper with wgmma (sm_90a), the twin of the sm80 backward in
// attention.cu: same inputs, same dropout stream, same results up to rounding. A block of two
// warpgroups owns 128 keys of one (sequence, head), 64 per warpgroup, keeps their dK and dV in
// registers and walks the sequence's queries in tiles of 64 (Q and dO double-buffered with
// cp.async). Per tile, each warpgroup:
//   S = Q K_w^T and dP = dO V_w^T   (64 queries x its 64 keys; Q, K, dO, V K-major in shared)
//   P, dS in registers              (rows are queries, so dropout is the forward's strip)
//   dQ += dS K_w                    (dS straight from the registers)
//   dV += P^T dO, dK += dS^T Q      (P and dS stored once to shared memory, read transposed)
// Only tiles with real tokens are visited, and a warpgroup whose keys all lie past the
// sequence's end sits the loop out.
// dQ: when a sequence may be longer than one block's keys, every block adds its share into an
// fp32 sum with atomics, which the host zeroes first and casts into dq after. When no sequence
// is (max_seqlen <= 128, all of ELECTRA's length-128 pretraining), the block holds every key of
// its sequence, so a tile's dQ is complete once the two warpgroups' shares are added: the second
// hands its share to the first through shared memory, which writes the rows in q's dtype. That
// saves the fp32 buffer's fill (4 bytes written per element of dq), its atomics (4 read and 4
// written per block adding, in L2 while it holds them) and the cast (4 read, 2 written), where
// the direct write is 2 bytes; and dQ comes out the same on every run.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <type_traits>

#include "attention_sm90.h"
#include "attention_tiles.cuh"
#include "tensor_core.cuh"
#include "wgmma.cuh"

namespace electra_fast {
namespace {

constexpr int kGroups = 2;  // warpgroups per block
constexpr int kThreads = 128 * kGroups;
constexpr int kKeys = 64 * kGroups;             // per block
constexpr int kQueries = 64;                    // per tile
constexpr int kScoreBytes = kQueries * 64 * 2;  // one warpgroup's P (or dS) tile

template <int D>
struct BackwardLayout {
  static constexpr int kKVBytes = kKeys * D * 2;     // K, and V
  static constexpr int kQBytes = kQueries * D * 2;   // one stage of Q, and of dO
  static constexpr int kK = 0, kV = kKVBytes;        // offsets, each 1024-byte aligned
  static constexpr int kQ = 2 * kKVBytes;            // Q stages 0, 1
  static constexpr int kGradOut = kQ + 2 * kQBytes;  // dO stages 0, 1
  static constexpr int kP = kGradOut + 2 * kQBytes;  // P of warpgroups 0, 1
  static constexpr int kDS = kP + kGroups * kScoreBytes;
  static constexpr int kBytes = kDS + kGroups * kScoreBytes;
  static constexpr size_t kSharedBytes = kBytes + 1024;  // room to align the base
  // Writing dQ directly, the second warpgroup's share of a tile's dQ, 64 columns per part
  // (one part per 64 of D), fp32 rows 72 floats apart: its 8-byte stores hit each bank at most
  // twice. Each warp of the first warpgroup then stages its 16 rows in q's dtype over its own.
  static constexpr int kDqPitch = 64 + 8;
  static constexpr int kDqPartBytes = kQueries * kDqPitch * 4;
  static constexpr int kDQ = kBytes;
  static constexpr size_t kSharedBytesDirect = kDQ + (D / 64) * kDqPartBytes + 1024;
  // After the loop dK is staged through K and V, dV through the Q and dO stages: 16 rows of
  // kPitch per warp.
  static constexpr int kStageBytes = kGroups * 4 * 16 * Shape<D>::kPitch * 2;
  static_assert(kStageBytes <= 2 * kKVBytes && kStageBytes <= 4 * kQBytes);
  static_assert(kK == 0 && kV + kKVBytes == kQ, "dK's staging runs from K on into V");
};

// The device helpers exist only where the kernel has a body (sm_90a device code).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

// Named barriers (barrier 0 is __syncthreads), numbered by immediates: with a register operand
// ptxas reserves all 16. bar.sync waits for `kThreads` arrivals in all; bar.arrive counts this
// thread's and goes on.
template <int kBarrier, int kThreads>
__device__ __forceinline__ void barrier_sync() {
  asm volatile("bar.sync %0, %1;\n" ::"n"(kBarrier), "n"(kThreads) : "memory");
}
template <int kBarrier, int kThreads>
__device__ __forceinline__ void barrier_arrive() {
  asm volatile("bar.arrive %0, %1;\n" ::"n"(kBarrier), "n"(kThreads) : "memory");
}

// Only the 128 threads of one warpgroup meet here (barriers 1 and 2).
__device__ __forceinline__ void warpgroup_sync(int group) {
  group == 0 ? barrier_sync<1, 128>() : barrier_sync<2, 128>();
}

// This warp's 16 rows of a 64 x 64 accumulator strip into a [row][column] tile in the 128-byte
// swizzle (64 columns: one 128-byte row), for a later wgmma that reads it as an MN-major
// operand. Lanes write 4 bytes each, all 32 banks distinct.
template <typename T>
__device__ __forceinline__ void store_swizzled(unsigned char* tile, const float (&acc)[8][4],
                                               int first_row, int lane) {
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = first_row + g + 8 * r;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      *reinterpret_cast<uint32_t*>(tile + row * kRowBytes + ((nt ^ (row % 8)) << 4) + 4 * t) =
          pack2<T>(acc[nt][2 * r], acc[nt][2 * r + 1]);
    }
  }
}

// Producer and consumer of one part of dQ (barriers 3 and 4, the two parts of D = 128): the
// second warpgroup arrives once its share is in shared memory, the first waits for it.
__device__ __forceinline__ void dq_part_stored(int part) {
  part == 0 ? barrier_arrive<3, 256>() : barrier_arrive<4, 256>();
}
__device__ __forceinline__ void wait_for_dq_part(int part) {
  part == 0 ? barrier_sync<3, 256>() : barrier_sync<4, 256>();
}

// This warp's 16 rows of a 64-column accumulator to (add = false) or added from (add = true) a
// [row][column] fp32 tile whose rows are `pitch` floats apart, starting at the warp's first row.
template <bool kAdd>
__device__ __forceinline__ void exchange_rows(float* tile, int pitch, float (&acc)[8][4],
                                              int lane) {
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      float2* at = reinterpret_cast<float2*>(tile + (g + 8 * r) * pitch + nt * 8 + 2 * t);
      if constexpr (kAdd) {
        const float2 other = *at;
        acc[nt][2 * r] += other.x;
        acc[nt][2 * r + 1] += other.y;
      } else {
        *at = make_float2(acc[nt][2 * r], acc[nt][2 * r + 1]);
      }
    }
  }
}

// dq[rows of this warp, columns c0 .. c0 + 63] += scale * part, rows at or past `length` left.
__device__ __forceinline__ void add_to_dq(float* dq, int64_t row_stride, const float (&part)[8][4],
                                          float scale, int first_row, int length, int c0,
                                          int lane) {
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = first_row + g + 8 * r;
    if (row >= length) continue;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      // sm_90 has 8-byte float atomics: half the instructions of two scalar ones.
      atomicAdd(reinterpret_cast<float2*>(dq + row * row_stride + c0 + nt * 8 + 2 * t),
                make_float2(part[nt][2 * r] * scale, part[nt][2 * r + 1] * scale));
    }
  }
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// kDirectDq: dq is the gradient itself (q's dtype, rows p.grad_row_stride apart) and every
// sequence fits the block's keys; otherwise dq is the zeroed fp32 sum [rows, H, D].
template <typename T, int D, bool kDirectDq>
__global__ void __launch_bounds__(kThreads, 1)
    attention_backward_sm90_kernel(const AttentionParams p, const T* __restrict__ grad_out,
                                   const T* __restrict__ q, const T* __restrict__ k,
                                   const T* __restrict__ v, const float* __restrict__ lse,
                                   const float* __restrict__ grad_dot_out,
                                   std::conditional_t<kDirectDq, T, float>* __restrict__ dq,
                                   T* __restrict__ dk, T* __restrict__ dv) {
#if !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();  // launched only by a build with sm_90a code, on a 9.0 device
#else
  using L = BackwardLayout<D>;
  using S = Shape<D>;
  extern __shared__ unsigned char shared_raw[];
  unsigned char* const base = shared_raw + ((1024u - (shared_address(shared_raw) & 1023u)) & 1023u);
  const uint32_t address = shared_address(base);

  const int64_t bh = blockIdx.x, b = bh / p.heads, h = bh % p.heads, H = p.heads;
  const int n0 = blockIdx.y * kKeys;
  const SequenceBounds seq = sequence_bounds(p, b);
  const int length = static_cast<int>(seq.length);
  const int group = threadIdx.x / 128, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int warp_row = (warp % 4) * 16;  // this warp's rows in its warpgroup's 64
  const int key0 = n0 + group * 64;      // this warpgroup's first key
  const bool group_active = key0 < length;
  const int cols = length - key0;  // this warpgroup's real keys, when fewer than 64
  const int tiles = n0 < length ? (length + kQueries - 1) / kQueries : 0;
  const int limit = rows_written(p, length);
  const int64_t head = h * D;
  // This head's columns of the sequence's first row of dq: the gradient's rows are
  // p.grad_row_stride apart, the fp32 sum's H * D.
  const int64_t dq_stride = kDirectDq ? p.grad_row_stride : H * D;
  auto* const dq_head = dq + seq.start * dq_stride + head;
  unsigned char* const p_tile = base + L::kP + group * kScoreBytes;
  unsigned char* const ds_tile = base + L::kDS + group * kScoreBytes;

  auto load_queries = [&](int tile, int stage) {
    const int m0 = tile * kQueries;
    const int rows = min(kQueries, length - m0);
    load_swizzled<T, D, kQueries, kThreads>(base + L::kQ + stage * L::kQBytes,
                                            q + (seq.start + m0) * p.q_row_stride + head,
                                            p.q_row_stride, rows, q);
    load_swizzled<T, D, kQueries, kThreads>(base + L::kGradOut + stage * L::kQBytes,
                                            grad_out + (seq.start + m0) * H * D + head, H * D, rows,
                                            grad_out);
  };
  if (tiles > 0) {
    const int rows = min(kKeys, length - n0);
    load_swizzled<T, D, kKeys, kThreads>(base + L::kK, k + (seq.start + n0) * p.k_row_stride + head,
                                         p.k_row_stride, rows, k);
    load_swizzled<T, D, kKeys, kThreads>(base + L::kV, v + (seq.start + n0) * p.v_row_stride + head,
                                         p.v_row_stride, rows, v);
    load_queries(0, 0);
    cp_async_commit();
  }

  float dk_acc[S::kDTiles][4] = {}, dv_acc[S::kDTiles][4] = {};
  const uint64_t seed = p.philox_key();
  for (int tile = 0; tile < tiles; ++tile) {
    const int stage = tile & 1, m0 = tile * kQueries;
    next_double_buffered_tile(tile, tiles, load_queries);
    if (!group_active) continue;
    const uint32_t q_address = address + L::kQ + stage * L::kQBytes;
    const uint32_t g_address = address + L::kGradOut + stage * L::kQBytes;

    // S = Q K_w^T and dP = dO V_w^T over D in k steps of 16 (+32 bytes within a 64-column
    // block, then the next block).
    float s[8][4] = {}, d_p[8][4] = {};  // the first k step overwrites them
    fence_accumulators(s);
    fence_accumulators(d_p);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t within = (kk % 4) * 32, block = kk / 4;
      const uint32_t queries = block * kQueries * kRowBytes + within;
      const uint32_t keys = block * kKeys * kRowBytes + group * 64 * kRowBytes + within;
      wgmma_ss<T, 64>(s, swizzled_descriptor(q_address + queries, 16, 1024),
                      swizzled_descriptor(address + L::kK + keys, 16, 1024), kk > 0);
      wgmma_ss<T, 64>(d_p, swizzled_descriptor(g_address + queries, 16, 1024),
                      swizzled_descriptor(address + L::kV + keys, 16, 1024), kk > 0);
    }
    wgmma_commit();
    // While they run: the forward's lse and D_i = rowsum(dO * O) of rows g, g + 8, and the
    // dropout decisions of this warp's 16 x 64 strip.
    const int row0 = m0 + warp_row + g;
    float lse_r[2], dot_r[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const bool inside = row0 + 8 * r < length;
      const int64_t at = (seq.start + row0 + 8 * r) * H + h;
      lse_r[r] = inside ? lse[at] * kLog2e : kInf;  // P = 0 on padded query rows
      dot_r[r] = inside ? grad_dot_out[at] : 0.0f;
    }
    const uint32_t keep =
        p.dropout() ? dropout_keep_bits(seed, bh, row0, key0, p.drop_threshold, lane) : ~0u;
    wgmma_wait<0>();
    fence_accumulators(s);
    fence_accumulators(d_p);
    probabilities_and_score_grads(s, d_p, cols, p.scale_log2, lse_r, dot_r, keep, p.keep_scale, t);
    store_swizzled<T>(p_tile, s, warp_row, lane);
    store_swizzled<T>(ds_tile, d_p, warp_row, lane);
    fence_view_async_shared();
    uint32_t ds_frag[4][4];
    accumulators_to_a<T>(d_p, ds_frag);

    // This warpgroup's share of dQ = dS K_w, 64 columns at a time (registers stay free for dK
    // and dV), dS straight from the registers.
    float dq_part[8][4];
    auto issue_dq = [&](int half) {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
#pragma unroll
        for (int c = 0; c < 4; ++c) dq_part[i][c] = 0.0f;
      }
      fence_accumulators(dq_part);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        const uint32_t at = half * kKeys * kRowBytes + (group * 64 + kk * 16) * kRowBytes;
        wgmma_rs<T, 64>(dq_part, ds_frag[kk],
                        swizzled_descriptor(address + L::kK + at, kKeys * kRowBytes, 1024));
      }
      wgmma_commit();
    };
    auto add_dq = [&](int half) {
      fence_accumulators(dq_part);
      if constexpr (kDirectDq) {
        float* const shared_rows =
            reinterpret_cast<float*>(base + L::kDQ + half * L::kDqPartBytes) +
            warp_row * L::kDqPitch;
        if (group == 1) {
          exchange_rows<false>(shared_rows, L::kDqPitch, dq_part, lane);
          dq_part_stored(half);
          return;
        }
        if (length > 64) {  // the second warpgroup has keys, and so a share
          wait_for_dq_part(half);
          exchange_rows<true>(shared_rows, L::kDqPitch, dq_part, lane);
        }
        __syncwarp();  // the warp's fp32 rows are read: they become its staging rows
        const float factor[2] = {p.scale, p.scale};
        store_rows<T, 64>(dq_part, factor, reinterpret_cast<T*>(shared_rows), dq_head + half * 64,
                          dq_stride, m0 + warp_row, length, limit, lane);
      } else {
        add_to_dq(dq_head, dq_stride, dq_part, p.scale, m0 + warp_row, length, half * 64, lane);
      }
    };
    issue_dq(0);
    warpgroup_sync(group);  // the warpgroup's P and dS are in shared memory

    // dV += P^T dO and dK += dS^T Q over the tile's queries in k steps of 16 (16 rows: 2048
    // bytes): A MN-major (a [query][key] tile read as keys x queries), B MN-major.
    wgmma_fence();
    fence_accumulators(dv_acc);
    fence_accumulators(dk_acc);
#pragma unroll
    for (int kk = 0; kk < kQueries / 16; ++kk) {
      const uint32_t rows = kk * 16 * kRowBytes;
      const uint64_t b_lead = kQueries * kRowBytes;  // to the next 64 columns of Q or dO
      wgmma_ss<T, D, 1, 1>(dv_acc, swizzled_descriptor(shared_address(p_tile) + rows, 1024, 1024),
                           swizzled_descriptor(g_address + rows, b_lead, 1024), true);
      wgmma_ss<T, D, 1, 1>(dk_acc, swizzled_descriptor(shared_address(ds_tile) + rows, 1024, 1024),
                           swizzled_descriptor(q_address + rows, b_lead, 1024), true);
    }
    wgmma_commit();
    wgmma_wait<1>();  // the first dQ half is done; its atomics overlap dV and dK
    add_dq(0);
    if constexpr (D == 128) {
      issue_dq(1);
      wgmma_wait<0>();
      add_dq(1);
    }
    wgmma_wait<0>();
    fence_accumulators(dv_acc);
    fence_accumulators(dk_acc);
  }

  __syncthreads();  // every warpgroup is done with K, V, Q and dO: they become staging space
  if constexpr (kDirectDq) {
    // dQ's rows past the visited tiles, up to the padded length, are zeros.
    if (group == 0) {
      float* const shared_rows = reinterpret_cast<float*>(base + L::kDQ) + warp_row * L::kDqPitch;
      const float zeros[8][4] = {}, factor[2] = {0.0f, 0.0f};
      for (int m0 = tiles * kQueries; m0 < limit; m0 += kQueries) {
#pragma unroll
        for (int half = 0; half < D / 64; ++half) {
          store_rows<T, 64>(zeros, factor, reinterpret_cast<T*>(shared_rows), dq_head + half * 64,
                            dq_stride, m0 + warp_row, length, limit, lane);
          __syncwarp();  // read before the next call writes the staging rows
        }
      }
    }
  }
  const int first_row = key0 + warp_row;
  const float dk_factor[2] = {p.scale, p.scale}, dv_factor[2] = {p.keep_scale, p.keep_scale};
  T* const stage_k = reinterpret_cast<T*>(base + L::kK) + warp * 16 * S::kPitch;
  T* const stage_v = reinterpret_cast<T*>(base + L::kQ) + warp * 16 * S::kPitch;
  const int64_t grad_stride = p.grad_row_stride;
  store_rows<T, D>(dk_acc, dk_factor, stage_k, dk + seq.start * grad_stride + head, grad_stride,
                   first_row, length, limit, lane);
  store_rows<T, D>(dv_acc, dv_factor, stage_v, dv + seq.start * grad_stride + head, grad_stride,
                   first_row, length, limit, lane);
#endif
}

}  // namespace

bool attention_sm90_backward_writes_dq(const AttentionParams& p) { return p.max_seqlen <= kKeys; }

void attention_backward_sm90(const AttentionBackwardCall& b, const at::Tensor& dq,
                             const at::Tensor& dk, const at::Tensor& dv) {
  const AttentionCall& call = b.call;
  const AttentionParams& p = call.params;
  const bool direct = dq.scalar_type() != at::kFloat;
  TORCH_CHECK(!direct || attention_sm90_backward_writes_dq(p),
              "attention_backward_sm90: dq in q's dtype needs max_seqlen <= ", kKeys, ", got ",
              p.max_seqlen);
  dispatch_wgmma_kernel(call.q.scalar_type(), p.head_dim, "backward", [&]<typename T, int D>() {
    auto launch = [&]<bool kDirect>(auto* dq_data, size_t bytes) {
      auto kernel = attention_backward_sm90_kernel<T, D, kDirect>;
      allow_shared_bytes(kernel, bytes);
      kernel<<<grid_of(p, kKeys), kThreads, bytes, c10::cuda::getCurrentCUDAStream()>>>(
          p, data<const T>(b.grad_out), data<const T>(call.q), data<const T>(call.k),
          data<const T>(call.v), b.lse.const_data_ptr<float>(),
          b.grad_dot_out.const_data_ptr<float>(), dq_data, data<T>(dk), data<T>(dv));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (direct) {
      launch.template operator()<true>(data<T>(dq), BackwardLayout<D>::kSharedBytesDirect);
    } else {
      launch.template operator()<false>(dq.mutable_data_ptr<float>(),
                                        BackwardLayout<D>::kSharedBytes);
    }
  });
}

}  // namespace electra_fast
