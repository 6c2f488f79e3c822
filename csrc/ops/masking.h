// ELECTRA's masking, the parts shared by the CPU kernel (masking.cpp) and the CUDA kernel
// (cuda/masking.cu): one definition of the random stream and of every per-position decision,
// so the two kernels (and the torch reference in electra_fast/ops/masking.py) agree bit for bit.
//
// Per sequence b and position i, Philox element b * L + i of the masking stream gives
//   x[0]: the position's sort key. The chosen positions are the k candidates with the smallest
//         (key, position); "bernoulli" also requires key < mask_prob * 2^32;
//   x[1]: the replacement decision, u = (x[1] >> 8) / 2^24: [MASK] if u < replace_prob, a random
//         token if u < replace_prob + random_prob, else the original token;
//   x[2]: the random token: the floor(x[2] * n / 2^32)-th non-special id, n = number of them.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cmath>
#include <cstdint>
#include <tuple>

#include "philox.h"

namespace electra_fast {

constexpr int kMaxSpecialIds = 64;

struct MaskingParams {
  int64_t seq_len;          // L
  int64_t max_predictions;  // N
  int64_t vocab_size;
  int64_t mask_token_id;
  float mask_prob;  // fp32 like the official round(num_tokens * mask_prob)
  double replace_prob;
  double random_prob;
  bool bernoulli;
  int64_t row_offset;  // the first row's index in the random stream
  int32_t num_special;
  int64_t special_ids[kMaxSpecialIds];  // sorted, unique, mask_token_id included
};

EF_HOST_DEVICE bool is_special(const MaskingParams& p, int64_t id) {
  for (int s = 0; s < p.num_special; ++s) {
    if (p.special_ids[s] == id) return true;
  }
  return false;
}

// The fixed strategy's count: max(1, min(N, round(n * mask_prob))) with fp32 arithmetic and
// round-half-to-even, as tf.round does.
EF_HOST_DEVICE int64_t fixed_mask_count(const MaskingParams& p, int64_t num_tokens) {
#if defined(__CUDA_ARCH__)
  const int64_t rounded = __float2ll_rn(__fmul_rn(static_cast<float>(num_tokens), p.mask_prob));
#else
  const int64_t rounded =
      static_cast<int64_t>(std::nearbyint(static_cast<float>(num_tokens) * p.mask_prob));
#endif
  const int64_t k = rounded < p.max_predictions ? rounded : p.max_predictions;
  return k > 1 ? k : 1;
}

EF_HOST_DEVICE bool bernoulli_included(const MaskingParams& p, uint32_t key) {
  return static_cast<double>(key) < static_cast<double>(p.mask_prob) * 4294967296.0;
}

EF_HOST_DEVICE Philox4 masking_randoms(uint64_t seed, int64_t row, int64_t pos, int64_t seq_len) {
  return philox_element(seed, static_cast<uint64_t>(row * seq_len + pos), kStreamMasking);
}

// What a chosen position holds in masked_ids.
EF_HOST_DEVICE int64_t masked_value(const MaskingParams& p, int64_t original, const Philox4& r) {
  const double u = static_cast<double>(r.x[1] >> 8) * (1.0 / 16777216.0);
  if (u < p.replace_prob) return p.mask_token_id;
  if (u < p.replace_prob + p.random_prob) {
    const uint64_t allowed = static_cast<uint64_t>(p.vocab_size - p.num_special);
    int64_t id = static_cast<int64_t>((static_cast<uint64_t>(r.x[2]) * allowed) >> 32);
    // The id-th non-special id: step over each special at or below it, in increasing order.
    for (int s = 0; s < p.num_special; ++s) {
      if (id >= p.special_ids[s]) ++id;
    }
    return id;
  }
  return original;
}

// Validates the op's arguments (shapes, dtypes, devices, ranges), naming the bad argument, and
// packs the scalar ones. Defined in masking.cpp; the CUDA kernel calls it too.
MaskingParams make_masking_params(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                  const at::Tensor& seed, c10::IntArrayRef special_ids,
                                  int64_t mask_token_id, int64_t vocab_size, double mask_prob,
                                  int64_t max_predictions, double replace_prob, double random_prob,
                                  bool bernoulli, int64_t row_offset);

using MaskingOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Uninitialised (masked_ids [B, L], positions [B, N], labels [B, N], weights [B, N]) on
// input_ids' device. Defined in masking.cpp.
MaskingOutputs empty_masking_outputs(const at::Tensor& input_ids, int64_t max_predictions);
}  // namespace electra_fast
