// Bidirectional attention, the parts shared by the CPU twin (attention.cpp) and the CUDA kernels
// (cuda/attention.cu): where each sequence lies, the dropout stream, and the host-side checks.
//
// Layouts. Padded: q, k, v [B, L, H, D], sequence b is rows b * L .. b * L + lengths[b]; rows
// past the length come out as zeros (output and gradients). Packed: q, k, v [T, H, D], sequence
// b is rows cu_seqlens[b] .. cu_seqlens[b + 1]. Rows are `row_stride` elements apart (the
// projections' fused output is not contiguous); heads are D apart, elements adjacent.
//
// lse [rows, H] (fp32): the softmax's log-sum-exp of each query row, natural log, of the scaled
// scores; +inf for padded rows. The backward recomputes P = exp(s * scale - lse) from it.
//
// Dropout. The keep decision of query i, key j (positions within the sequence) of head row
// bh = b * H + h is the 16-bit half (j % 8) of the Philox block with counter
// (j / 8, i, kStreamAttentionDropout, bh): word (j % 8) / 2, low half for even j. It is kept when
// the half is at least t = round(p * 2^16), so P(keep) = 1 - t / 2^16, and kept probabilities
// are scaled by 2^16 / (2^16 - t): exactly unbiased. One Philox call serves 8 keys, the columns
// one m16n8 tensor-core tile gives a quad of GPU threads. The decision depends on the sequence
// and positions only, so padded and packed calls drop the same probabilities.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cmath>
#include <cstdint>
#include <tuple>

#include "philox.h"

namespace electra_fast {

constexpr int kAttentionTile = 64;  // queries per tile and keys per tile, on both devices

struct AttentionParams {
  int64_t batch, heads, head_dim;
  int64_t max_seqlen;  // L for the padded layout
  int64_t total_rows;  // B * L or T
  int64_t q_row_stride, k_row_stride, v_row_stride;
  int64_t grad_row_stride;  // the backward's dq, dk and dv: H * D, or 3 * H * D into one dqkv
  bool packed;
  const int32_t* lengths;     // padded layout, [B]; nullptr: every sequence is L long
  const int32_t* cu_seqlens;  // packed layout, [B + 1]
  const int64_t* seed;        // the Philox key, a 0-d tensor on the device; nullptr without dropout
  float scale;                // softmax scale
  float scale_log2;           // scale * log2(e): the kernels work with exp2
  uint32_t drop_threshold;    // t: a half below it drops; 0: no dropout
  float keep_scale;           // 2^16 / (2^16 - t)

  EF_HOST_DEVICE bool dropout() const { return drop_threshold > 0; }
  EF_HOST_DEVICE uint64_t philox_key() const {
    return dropout() ? static_cast<uint64_t>(*seed) : 0;
  }
};

struct SequenceBounds {
  int64_t start;   // the sequence's first row
  int64_t length;  // its tokens
};

// Lengths and offsets are clamped into the tensors, so that values nobody checked (the encoder
// checks its layout once, not per layer) cannot make a kernel read out of bounds.
EF_HOST_DEVICE SequenceBounds sequence_bounds(const AttentionParams& p, int64_t b) {
  int64_t start, length;
  if (p.packed) {
    start = p.cu_seqlens[b];
    length = static_cast<int64_t>(p.cu_seqlens[b + 1]) - start;
    start = start < 0 ? 0 : (start > p.total_rows ? p.total_rows : start);
    length = length > p.total_rows - start ? p.total_rows - start : length;
  } else {
    start = b * p.max_seqlen;
    length = p.lengths != nullptr ? p.lengths[b] : p.max_seqlen;
  }
  length = length < 0 ? 0 : (length > p.max_seqlen ? p.max_seqlen : length);
  return SequenceBounds{start, length};
}

// The Philox block holding the decisions of keys 8 * group .. 8 * group + 7 for `query`.
EF_HOST_DEVICE Philox4 dropout_block(uint64_t seed, int64_t bh, int64_t query, int64_t group) {
  return philox4x32_10(static_cast<uint32_t>(group), static_cast<uint32_t>(query),
                       kStreamAttentionDropout, static_cast<uint32_t>(bh),
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Whether the half (j % 8) of `block` keeps its probability.
EF_HOST_DEVICE bool dropout_keeps(const Philox4& block, int64_t key, uint32_t threshold) {
  const uint32_t word = philox_word(block, static_cast<uint32_t>(key >> 1) & 3u);
  const uint32_t half = (key & 1) ? (word >> 16) : (word & 0xffffu);
  return half >= threshold;
}

// q, k, v in a kernel-readable layout and the call's parameters, its arguments validated (each
// error names the bad one). Defined in attention_call.cpp, with the rest of the host side below.
struct AttentionCall {
  at::Tensor q, k, v;
  AttentionParams params;
};
AttentionCall prepare_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const c10::optional<at::Tensor>& lengths,
                                const c10::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen,
                                const c10::optional<at::Tensor>& seed, double dropout_p,
                                double softmax_scale);

// The same for the backward, with its own inputs checked and made ready for the kernels: grad_out
// and out contiguous, 16-byte aligned and in q's dtype, lse contiguous (each copied only when it
// is not so already: autograd's are). grad_dot_out, D_i = sum_j P_ij dP_ij = rowsum(dO * O) fp32
// [rows, H], is left undefined for the device's backward to fill with its own fused kernel
// (attention_grad_dot_out_cpu; in ATen ops it was two casts, a product and a sum over tensors of
// four times dO's bytes).
struct AttentionBackwardCall {
  AttentionCall call;
  at::Tensor grad_out, out, grad_dot_out, lse;
};
AttentionBackwardCall prepare_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen,
    const c10::optional<at::Tensor>& seed, double dropout_p, double softmax_scale);

// An uninitialised result of q's shape and dtype; zeros in the packed layout, where rows outside
// every sequence are written by no kernel.
at::Tensor new_attention_result(const AttentionCall& call, at::ScalarType dtype);

// The forward's lse, uninitialised: fp32 [rows, H].
at::Tensor new_attention_lse(const AttentionCall& call);

// q, k and v packed as the encoder's fused projection makes them: qkv [B, L, 3, H, D] (padded)
// or [T, 3, H, D] (packed, with cu_seqlens). Returns the three views, qkv's layout checked.
std::tuple<at::Tensor, at::Tensor, at::Tensor> unpack_qkv(const at::Tensor& qkv, bool packed);

using AttentionGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// A device's backward kernels over a prepared call: they fill its grad_dot_out, then write dq,
// dk and dv (rows call.params.grad_row_stride apart).
using RunAttentionBackward = void (*)(AttentionBackwardCall& b, const at::Tensor& dq,
                                      const at::Tensor& dk, const at::Tensor& dv);

// The attention_backward and attention_qkv_backward ops on the device whose kernels `run` are:
// the call prepared and the gradients allocated (qkv's as one tensor whose views the kernels
// write), the same on every device.
AttentionGrads attention_backward_with(RunAttentionBackward run, const at::Tensor& grad_out,
                                       const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, const at::Tensor& out,
                                       const at::Tensor& lse,
                                       const c10::optional<at::Tensor>& lengths,
                                       const c10::optional<at::Tensor>& cu_seqlens,
                                       int64_t max_seqlen, const c10::optional<at::Tensor>& seed,
                                       double dropout_p, double softmax_scale);
at::Tensor attention_qkv_backward_with(RunAttentionBackward run, const at::Tensor& grad_out,
                                       const at::Tensor& qkv, const at::Tensor& out,
                                       const at::Tensor& lse,
                                       const c10::optional<at::Tensor>& lengths,
                                       const c10::optional<at::Tensor>& cu_seqlens,
                                       int64_t max_seqlen, const c10::optional<at::Tensor>& seed,
                                       double dropout_p, double softmax_scale);

}  // namespace electra_fast
