// The generator step (MLM cross-entropy + Gumbel-max sampling over the generator's logits), the
// parts shared by the CPU kernel (sampling.cpp) and the CUDA kernel (cuda/sampling.cu): the
// random stream, the Gumbel noise and the per-row state, so that both kernels (and the torch
// reference in electra_fast/ops/sampling.py) draw the same samples.
//
// The noise of row r, vocabulary column v (of a vocabulary of V columns) is word v % 4 of
// Philox element r * ceil(V / 4) + v / 4 of the sampling stream: one Philox call serves four
// columns. A tile of columns [vocab_start, vocab_start + n) uses the same numbers as the whole
// row, so a step computed tile by tile samples exactly what the one-pass step samples.
#pragma once
#include <ATen/core/Tensor.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "dispatch.h"
#include "philox.h"

#if defined(__CUDA_ARCH__)
#define EF_LOGF logf
#define EF_EXPF expf
#else
#define EF_LOGF std::log
#define EF_EXPF std::exp
#endif

namespace electra_fast {

EF_HOST_DEVICE uint64_t sampling_groups(int64_t vocab_size) {
  return static_cast<uint64_t>((vocab_size + 3) / 4);
}

// The index in the sampling stream of the Philox element of row `row`, columns 4 group + 0..3.
EF_HOST_DEVICE uint64_t sampling_element(int64_t row, int64_t group, int64_t vocab_size) {
  return static_cast<uint64_t>(row) * sampling_groups(vocab_size) + static_cast<uint64_t>(group);
}

EF_HOST_DEVICE Philox4 sampling_randoms(uint64_t seed, int64_t row, int64_t group,
                                        int64_t vocab_size) {
  return philox_element(seed, sampling_element(row, group, vocab_size), kStreamSampling);
}

// Gumbel(0, 1) noise from one 32-bit word, in fp32: t = (w + 1/2) / 2^32 is uniform in (0, 1)
// (capped below 1), E = -log(1 - t) is Exp(1), and g = -log(E). E must stay exact for small t,
// which is where the large g that win the argmax come from: g reaches 22.9, against 17.3 for
// -log(-log(u)) on a 24-bit u. The smallest g is -log(16.6) = -2.81; g is always finite.
EF_HOST_DEVICE float gumbel_uniform(uint32_t word) {
  constexpr float kBelowOne = 0.99999994f;  // the largest float below 1
#if defined(__CUDA_ARCH__)
  // The product is exact (a power of two), so no contraction can change the sum.
  const float t = __fadd_rn(__fmul_rn(__uint2float_rn(word), 2.3283064e-10f), 1.1641532e-10f);
#else
  const float t = static_cast<float>(word) * 2.3283064e-10f + 1.1641532e-10f;  // 2^-32, 2^-33
#endif
  return t < kBelowOne ? t : kBelowOne;
}

// E = -log1p(-t) without log1p (torch's CPU log1p is not vectorised, and it costs more than log
// on the GPU): with u = fl(1 - t), -log1p(-t) = t * log(u) / (u - 1), accurate to a few ulps
// (Goldberg, "What every computer scientist should know about floating-point arithmetic",
// Theorem 4); E = t where u rounds to 1. `log_u` is log(u), computed by the caller.
EF_HOST_DEVICE float gumbel_exponential(float t, float u, float log_u) {
#if defined(__CUDA_ARCH__)
  return u == 1.0f ? t : __fdiv_rn(__fmul_rn(t, log_u), __fsub_rn(u, 1.0f));
#else
  return u == 1.0f ? t : (t * log_u) / (u - 1.0f);
#endif
}

// The noise of a uniform t = gumbel_uniform(word).
EF_HOST_DEVICE float gumbel_noise_of_uniform(float t) {
  const float u = 1.0f - t;
  return -EF_LOGF(gumbel_exponential(t, u, EF_LOGF(u)));
}

EF_HOST_DEVICE float gumbel_noise(uint32_t word) {
  return gumbel_noise_of_uniform(gumbel_uniform(word));
}

// Gumbel-max without the noise of most columns. E = -log(1 - t) >= t, so g = -log(E) <= -log(t):
// a column with t > exp(a - bound), a = x / T, scores a + g < bound whatever its exact noise.
// Once some column of the row has scored `bound` (any exact score is a lower bound of the
// row's best), such a column can neither win nor tie, and the kernels skip its two logs and
// division. With `bound` near the row's best score, about one column in V survives the test.
//
// The test is evaluated with rounded (on the GPU, approximate) exponentials, so it gets a margin
// that covers, in the log domain: the exponential's error (the GPU's __expf: at most 104 ulps
// for arguments in [-88, 88], 1.2e-5 relative), the exact noise's own error (a few ulps of
// log(E) and of g <= 23: under 5e-6), and the roundings of a, bound, a - bound and the score
// (each at most 2^-24 of |a| + |bound|, four of them). The test never drops a column whose exact
// score would reach `bound`, so the samples are bit for bit those of scoring every column.
// `a_magnitude` bounds |a| of the columns tested.
EF_HOST_DEVICE float gumbel_skip_margin(float a_magnitude, float bound) {
  return 1e-4f + 9.5367432e-7f * (a_magnitude + fabsf(bound));  // 1e-4 + 2^-20 (|a| + |bound|)
}

// The Gumbel-max score of one logit: x / T + g, as x * (1 / T) + g rounded twice, never fused,
// so that every implementation gets the same float.
EF_HOST_DEVICE float gumbel_score(float x, float inverse_temperature, float noise) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(__fmul_rn(x, inverse_temperature), noise);
#else
  return x * inverse_temperature + noise;  // setup.py builds with -ffp-contract=off
#endif
}

// The running state of one row (or one thread's share of it): max and sum of exp(x - max) for
// the logsumexp, and the best Gumbel score with its column (the smallest column among equal
// scores, as torch.argmax). NaN scores never win, so a sample is always a real column.
struct RowState {
  float max;
  float sum;
  float best_score;
  int64_t best_index;
};

EF_HOST_DEVICE RowState empty_row_state() {
  return RowState{-std::numeric_limits<float>::infinity(), 0.0f,
                  -std::numeric_limits<float>::infinity(), std::numeric_limits<int64_t>::max()};
}

// exp(from - to) for a running max that moves from `from` to `to` >= from; 0 from -inf.
EF_HOST_DEVICE float rescale(float from, float to) {
  return from == -std::numeric_limits<float>::infinity() ? 0.0f : EF_EXPF(from - to);
}

EF_HOST_DEVICE void add_candidate(RowState& s, float score, int64_t index) {
  if (score > s.best_score || (score == s.best_score && index < s.best_index)) {
    s.best_score = score;
    s.best_index = index;
  }
}

// Adds one logit to the logsumexp. A -inf logit adds nothing (and must not make exp(-inf + inf));
// a NaN one makes the sum NaN; a +inf one makes it NaN too (inf - inf): the loss is not finite.
EF_HOST_DEVICE void add_logit(RowState& s, float x) {
  if (x > s.max) {
    s.sum = s.sum * rescale(s.max, x) + 1.0f;
    s.max = x;
  } else if (x != -std::numeric_limits<float>::infinity()) {
    s.sum += EF_EXPF(x - s.max);
  }
}

EF_HOST_DEVICE void merge_row_states(RowState& into, const RowState& other) {
  const float max = into.max > other.max ? into.max : other.max;
  into.sum = into.sum * rescale(into.max, max) + other.sum * rescale(other.max, max);
  into.max = max;
  add_candidate(into, other.best_score, other.best_index);
}

EF_HOST_DEVICE float row_logsumexp(const RowState& s) { return s.max + EF_LOGF(s.sum); }

// A row whose scores are all NaN has no best column; it gets `fallback` (a column it may
// sample), so that a sample is always in range.
EF_HOST_DEVICE int64_t best_column(const RowState& s, int64_t fallback) {
  return s.best_index == std::numeric_limits<int64_t>::max() ? fallback : s.best_index;
}

// The gradient of one logit: (p - [v == label]) * g with p = exp(x - lse) and g the incoming
// gradient of the row's loss (0 for an ignored row).
EF_HOST_DEVICE float logit_gradient(float x, float lse, bool is_label, float grad_loss) {
  return (EF_EXPF(x - lse) - (is_label ? 1.0f : 0.0f)) * grad_loss;
}

// Validates generator_step's arguments, naming the bad one. Defined in sampling.cpp, used by
// both kernels. `vocab_start` and `vocab_size` describe a tile (the whole row: 0 and V).
void check_generator_step_args(const at::Tensor& logits, const at::Tensor& labels,
                               const at::Tensor& seed, double temperature, bool disallow_labels,
                               int64_t vocab_start, int64_t vocab_size, int64_t row_offset);
void check_generator_step_backward_args(const at::Tensor& grad_loss, const at::Tensor& logits,
                                        const at::Tensor& labels, const at::Tensor& lse,
                                        int64_t vocab_start);

}  // namespace electra_fast
