// The generator step on the CPU: rows in parallel, one pass over each row's logits for the
// logsumexp and the Gumbel argmax; the backward writes softmax - onehot from the saved logsumexp.
#include "sampling.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "checks.h"
#include "philox_cpu.h"

namespace electra_fast {

void check_generator_step_args(const at::Tensor& logits, const at::Tensor& labels,
                               const at::Tensor& seed, double temperature, bool disallow_labels,
                               int64_t vocab_start, int64_t vocab_size, int64_t row_offset) {
  TORCH_CHECK_VALUE(row_offset >= 0, "row_offset must be non-negative, got ", row_offset);
  EF_CHECK_DIM(logits, 2);
  EF_CHECK_DTYPE(
      logits, at::isReducedFloatingType(logits.scalar_type()) || logits.scalar_type() == at::kFloat,
      "float32, bfloat16 or float16");
  EF_CHECK_CONTIGUOUS(logits);
  TORCH_CHECK_VALUE(logits.size(1) >= 1, "logits must have at least one column, got shape ",
                    logits.sizes());
  EF_CHECK_SHAPE(labels, logits.size(0));
  EF_CHECK_DTYPE(labels, labels.scalar_type() == at::kLong, "int64");
  EF_CHECK_DEVICE(labels, logits.device());
  EF_CHECK_CONTIGUOUS(labels);
  EF_CHECK_DIM(seed, 0);
  EF_CHECK_DTYPE(seed, seed.scalar_type() == at::kLong, "int64");
  EF_CHECK_DEVICE(seed, logits.device());
  TORCH_CHECK_VALUE(temperature > 0.0 && std::isfinite(temperature),
                    "temperature must be positive and finite, got ", temperature);
  TORCH_CHECK_VALUE(vocab_start >= 0 && vocab_start + logits.size(1) <= vocab_size,
                    "the logits' columns [", vocab_start, ", ", vocab_start + logits.size(1),
                    ") must lie in the vocabulary [0, vocab_size=", vocab_size, ")");
  TORCH_CHECK_VALUE(!disallow_labels || vocab_size >= 2,
                    "disallow_labels needs at least two columns to sample from, got ", vocab_size);
}

void check_generator_step_backward_args(const at::Tensor& grad_loss, const at::Tensor& logits,
                                        const at::Tensor& labels, const at::Tensor& lse,
                                        int64_t vocab_start) {
  EF_CHECK_DIM(logits, 2);
  EF_CHECK_CONTIGUOUS(logits);
  const int64_t rows = logits.size(0);
  for (const at::Tensor* t : {&grad_loss, &lse}) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == rows && t->scalar_type() == at::kFloat &&
                          t->device() == logits.device(),
                      t == &lse ? "lse" : "grad_loss", " must be float32 of shape [", rows, "] on ",
                      logits.device(), ", got ", t->scalar_type(), " ", t->sizes(), " on ",
                      t->device());
  }
  EF_CHECK_SHAPE(labels, rows);
  EF_CHECK_DTYPE(labels, labels.scalar_type() == at::kLong, "int64");
  EF_CHECK_DEVICE(labels, logits.device());
  TORCH_CHECK_VALUE(vocab_start >= 0, "vocab_start must be non-negative, got ", vocab_start);
}

namespace {

// Scratch of one thread, float32 rows: a row's logits, its uniforms, its weights exp(a - a_max)
// when T != 1, and the uniforms and noise of the columns whose exact noise is needed. The
// transcendental passes (log, exp) run as ATen's in-place ops on them: vectorised (Sleef) for
// the CPU that torch runs on, and the very functions the torch reference calls. The exact ones
// (a subtraction, a negation) are plain loops: an ATen op costs microseconds of dispatch (a
// scalar's sub_ also wraps the scalar in a tensor and casts it), several times a row, which at
// the demo's vocabulary of 4,000 was about a tenth of a pretraining step.
struct Scratch {
  at::Tensor logits, uniform, weights, picked, picked_noise;
  std::vector<int64_t> columns;  // the picked columns
  explicit Scratch(int64_t n)
      : logits(at::empty(std::array<int64_t, 1>{n}, at::TensorOptions().dtype(at::kFloat))),
        uniform(at::empty_like(logits)),
        weights(at::empty_like(logits)),
        picked(at::empty_like(logits)),
        picked_noise(at::empty_like(logits)) {}
};

// The row's uniforms t (gumbel_uniform in sampling.h) into scratch.uniform, from Philox blocks
// computed kPhiloxBatch at a time (philox_cpu.h: AVX2 where the CPU has it).
void fill_uniforms(Scratch& scratch, int64_t n, int64_t row, int64_t vocab_start,
                   int64_t vocab_size, uint64_t seed) {
  float* t = scratch.uniform.mutable_data_ptr<float>();
  const int64_t first = vocab_start >> 2, last = (vocab_start + n - 1) >> 2;
  uint32_t low[kPhiloxBatch], high[kPhiloxBatch];
  PhiloxBatch words;
  for (int64_t g0 = first; g0 <= last; g0 += kPhiloxBatch) {
    for (int j = 0; j < kPhiloxBatch; ++j) {
      const uint64_t index = sampling_element(row, g0 + j, vocab_size);
      low[j] = static_cast<uint32_t>(index);
      high[j] = static_cast<uint32_t>(index >> 32);
    }
    philox_batch(low, high, kStreamSampling, 0u, static_cast<uint32_t>(seed),
                 static_cast<uint32_t>(seed >> 32), words);
    for (int j = 0; j < kPhiloxBatch && g0 + j <= last; ++j) {
      for (int w = 0; w < 4; ++w) {
        const int64_t c = 4 * (g0 + j) + w - vocab_start;
        if (c >= 0 && c < n) t[c] = gumbel_uniform(words.x[w][j]);
      }
    }
  }
}

// The exact noise (gumbel_noise_of_uniform) of the first k uniforms of `uniform`, into the first
// k entries of `noise`, one pass per step so that the logs run vectorised.
void exact_noise(const at::Tensor& uniform, const at::Tensor& noise, int64_t k) {
  const float* t = uniform.const_data_ptr<float>();
  float* g = noise.mutable_data_ptr<float>();
  at::Tensor head = noise.narrow(0, 0, k);
  for (int64_t c = 0; c < k; ++c) g[c] = 1.0f - t[c];
  head.log_();
  for (int64_t c = 0; c < k; ++c) g[c] = gumbel_exponential(t[c], 1.0f - t[c], g[c]);
  head.log_();
  for (int64_t c = 0; c < k; ++c) g[c] = -g[c];
}

// x[0, n) -= value, in place: the same rounding as ATen's sub_, without its dispatch.
void subtract(float* x, int64_t n, float value) {
  for (int64_t c = 0; c < n; ++c) x[c] -= value;
}

// Scores the picked columns exactly (their uniforms gathered into scratch.picked).
template <typename scalar_t>
void score_picked(RowState& state, const scalar_t* x, int64_t vocab_start,
                  float inverse_temperature, Scratch& scratch) {
  const int64_t k = static_cast<int64_t>(scratch.columns.size());
  const float* t = scratch.uniform.const_data_ptr<float>();
  float* picked = scratch.picked.mutable_data_ptr<float>();
  for (int64_t i = 0; i < k; ++i) picked[i] = t[scratch.columns[i]];
  exact_noise(scratch.picked, scratch.picked_noise, k);
  const float* g = scratch.picked_noise.const_data_ptr<float>();
  for (int64_t i = 0; i < k; ++i) {
    const int64_t c = scratch.columns[i];
    add_candidate(state, gumbel_score(static_cast<float>(x[c]), inverse_temperature, g[i]),
                  vocab_start + c);
  }
}

// The Gumbel argmax over the columns whose weight w = exp(a - a_max) (a = x / T) is in `w`, for
// a row with finite logits or -inf (sampling.h: gumbel_skip_margin). A probe first: the column
// of the largest w / t, whose bound a - log(t) on its score is the row's largest, is usually
// the winner or close to it; its exact score is the bound. Then the test t > w * exp(a_max -
// bound + margin) = exp(a - bound + margin) drops all but about one column in V. The product
// adds to the margin's list two roundings of exp, one of the product and one of a - a_max. A
// column the test could drop wrongly has exp(a - bound + margin) >= t >= 2^-33, so a >= bound
// - 23 and |a - a_max| <= |a_max| + |bound| + 23: the margin for a magnitude of 2 |a_max|
// covers that rounding too.
template <typename scalar_t>
void sample_row(RowState& state, const scalar_t* x, const float* w, int64_t n, float a_max,
                int64_t vocab_start, float inverse_temperature, int64_t disallowed,
                Scratch& scratch) {
  const float* t = scratch.uniform.const_data_ptr<float>();
  const int64_t skipped = disallowed - vocab_start;  // outside [0, n) when not in the tile
  int64_t probe = skipped == 0 ? 1 : 0;
  if (probe >= n) return;  // the only column is disallowed
  float probe_w = w[probe], probe_t = t[probe];
  for (int64_t c = probe + 1; c < n; ++c) {
    if (w[c] * probe_t > probe_w * t[c] && c != skipped) {  // w / t larger, without dividing
      probe = c;
      probe_w = w[c];
      probe_t = t[c];
    }
  }
  scratch.columns.assign(1, probe);
  score_picked(state, x, vocab_start, inverse_temperature, scratch);
  const float bound = state.best_score;
  const float factor = std::exp(a_max - bound + gumbel_skip_margin(2.0f * std::fabs(a_max), bound));
  scratch.columns.clear();
  for (int64_t c = 0; c < n; ++c) {
    if (!(t[c] > w[c] * factor) && c != probe && c != skipped) scratch.columns.push_back(c);
  }
  score_picked(state, x, vocab_start, inverse_temperature, scratch);
}

// Copies a row to float32; returns its max (NaN never is) and sets `any_nan`. Eight running
// maxima, not one, so that the comparisons need not wait for each other.
template <typename scalar_t>
float load_row(const scalar_t* x, int64_t n, float* out, bool& any_nan) {
  constexpr float kLowest = -std::numeric_limits<float>::infinity();
  float max[8] = {kLowest, kLowest, kLowest, kLowest, kLowest, kLowest, kLowest, kLowest};
  int nan = 0;
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    for (int j = 0; j < 8; ++j) {
      const float v = static_cast<float>(x[c + j]);
      out[c + j] = v;
      max[j] = v > max[j] ? v : max[j];
      nan |= v != v;
    }
  }
  for (; c < n; ++c) {
    const float v = static_cast<float>(x[c]);
    out[c] = v;
    max[0] = v > max[0] ? v : max[0];
    nan |= v != v;
  }
  any_nan = nan != 0;
  for (int j = 1; j < 8; ++j) max[0] = max[j] > max[0] ? max[j] : max[0];
  return max[0];
}

// Four running sums, not one: a sum's additions wait for each other (4 cycles each).
double sum_in_double(const float* x, int64_t n) {
  double partial[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t c = 0;
  for (; c + 4 <= n; c += 4) {
    for (int j = 0; j < 4; ++j) partial[j] += x[c + j];
  }
  for (; c < n; ++c) partial[0] += x[c];
  return (partial[0] + partial[1]) + (partial[2] + partial[3]);
}

// The state of one row over its columns [vocab_start, vocab_start + n). `disallowed` is a
// column never sampled (-1 for none); it still counts in the logsumexp. The sum of
// exp(x - max) is accumulated in double: a sequential fp32 sum of 30k terms drifts by ~1e-5
// (the CUDA kernel's tree of partial sums does not need this).
template <typename scalar_t>
RowState scan_row(const scalar_t* x, int64_t n, int64_t row, int64_t vocab_start,
                  int64_t vocab_size, uint64_t seed, float inverse_temperature, int64_t disallowed,
                  Scratch& scratch) {
  RowState state = empty_row_state();
  float* logits = scratch.logits.mutable_data_ptr<float>();
  bool any_nan = false;
  state.max = load_row(x, n, logits, any_nan);
  fill_uniforms(scratch, n, row, vocab_start, vocab_size, seed);
  // a = x * (1 / T) as gumbel_score rounds it; x -> a is increasing, so a_max = a(max).
  const float a_max = state.max * inverse_temperature;
  const float* weights = logits;  // exp(a - a_max), with T = 1 the logsumexp's terms
  const bool every_column = any_nan || !std::isfinite(state.max);
  if (every_column) {
    // A NaN or infinite logit: every column's exact noise, without the shortcut's reasoning.
    scratch.columns.clear();
    for (int64_t c = 0; c < n; ++c) {
      if (vocab_start + c != disallowed) scratch.columns.push_back(c);
    }
    score_picked(state, x, vocab_start, inverse_temperature, scratch);
    // Every logit -inf: the sum is 0 and the lse -inf. Every logit NaN or -inf, at least one
    // NaN: the lse is NaN, as the CUDA kernel's and the reference's (a tile of NaN logits must
    // not vanish from the row's logsumexp). Else a +inf or NaN makes the sum below NaN.
    if (state.max == -std::numeric_limits<float>::infinity()) {
      if (any_nan) state.sum = std::numeric_limits<float>::quiet_NaN();
      return state;
    }
  } else if (inverse_temperature != 1.0f) {
    scratch.weights.copy_(scratch.logits).mul_(inverse_temperature).sub_(a_max).exp_();
    weights = scratch.weights.const_data_ptr<float>();
  }
  subtract(logits, n, state.max);
  scratch.logits.exp_();  // exp(x - max): 0 from -inf, NaN from NaN or inf - inf
  state.sum = static_cast<float>(sum_in_double(logits, n));  // rounded once: 6e-8 in the lse
  if (!every_column) {
    sample_row(state, x, weights, n, a_max, vocab_start, inverse_temperature, disallowed, scratch);
  }
  return state;
}

int64_t checked_label(const int64_t* labels, int64_t row, int64_t ignore_index,
                      int64_t vocab_size) {
  const int64_t label = labels[row];
  TORCH_CHECK_VALUE(label == ignore_index || (label >= 0 && label < vocab_size),
                    "labels must be in [0, vocab_size=", vocab_size,
                    ") or ignore_index=", ignore_index, ", got ", label, " at [", row, "]");
  return label;
}

int64_t grain(int64_t columns) {
  return std::max<int64_t>(1, 65536 / std::max<int64_t>(1, columns));
}

std::array<int64_t, 1> row_shape(const at::Tensor& logits) { return {logits.size(0)}; }

std::tuple<at::Tensor, at::Tensor, at::Tensor> generator_step_cpu(
    const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& seed, double temperature,
    bool disallow_labels, int64_t ignore_index, bool /*inplace_backward*/, int64_t row_offset) {
  EF_CHECK_DIM(logits, 2);  // before size(1), which would throw an IndexError naming no argument
  const int64_t V = logits.size(1);
  check_generator_step_args(logits, labels, seed, temperature, disallow_labels, 0, V, row_offset);
  const auto f32 = logits.options().dtype(at::kFloat);
  at::Tensor loss = at::empty(row_shape(logits), f32);
  at::Tensor lse = at::empty(row_shape(logits), f32);
  at::Tensor samples = at::empty(row_shape(logits), logits.options().dtype(at::kLong));
  const uint64_t key = static_cast<uint64_t>(seed.item<int64_t>());
  const float inverse_temperature = static_cast<float>(1.0 / temperature);
  EF_DISPATCH_FLOATS(logits.scalar_type(), "generator_step_cpu", [&] {
    const scalar_t* x = logits.const_data_ptr<scalar_t>();
    const int64_t* label_ptr = labels.const_data_ptr<int64_t>();
    float* loss_ptr = loss.mutable_data_ptr<float>();
    float* lse_ptr = lse.mutable_data_ptr<float>();
    int64_t* sample_ptr = samples.mutable_data_ptr<int64_t>();
    at::parallel_for(0, logits.size(0), grain(V), [&](int64_t begin, int64_t end) {
      Scratch scratch(V);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t label = checked_label(label_ptr, r, ignore_index, V);
        const bool ignored = label == ignore_index;
        const int64_t disallowed = disallow_labels && !ignored ? label : -1;
        const RowState s = scan_row(x + r * V, V, row_offset + r, 0, V, key, inverse_temperature,
                                    disallowed, scratch);
        lse_ptr[r] = row_logsumexp(s);
        loss_ptr[r] = ignored ? 0.0f : lse_ptr[r] - static_cast<float>(x[r * V + label]);
        sample_ptr[r] = best_column(s, disallowed == 0 ? 1 : 0);
      }
    });
  });
  return {loss, samples, lse};
}

// One tile of columns of a step computed tile by tile (generator_step_linear): the tile's
// logsumexp, the label's logit when the label is in the tile (else -inf), and the tile's best
// Gumbel score and column.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> generator_step_tile_cpu(
    const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& seed, double temperature,
    bool disallow_labels, int64_t ignore_index, int64_t vocab_start, int64_t vocab_size,
    int64_t row_offset) {
  check_generator_step_args(logits, labels, seed, temperature, disallow_labels, vocab_start,
                            vocab_size, row_offset);
  const int64_t n = logits.size(1);
  const auto f32 = logits.options().dtype(at::kFloat);
  at::Tensor lse = at::empty(row_shape(logits), f32);
  at::Tensor label_logit = at::empty(row_shape(logits), f32);
  at::Tensor best_score = at::empty(row_shape(logits), f32);
  at::Tensor samples = at::empty(row_shape(logits), logits.options().dtype(at::kLong));
  const uint64_t key = static_cast<uint64_t>(seed.item<int64_t>());
  const float inverse_temperature = static_cast<float>(1.0 / temperature);
  EF_DISPATCH_FLOATS(logits.scalar_type(), "generator_step_tile_cpu", [&] {
    const scalar_t* x = logits.const_data_ptr<scalar_t>();
    const int64_t* label_ptr = labels.const_data_ptr<int64_t>();
    at::parallel_for(0, logits.size(0), grain(n), [&](int64_t begin, int64_t end) {
      Scratch scratch(n);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t label = checked_label(label_ptr, r, ignore_index, vocab_size);
        const bool ignored = label == ignore_index;
        const int64_t disallowed = disallow_labels && !ignored ? label : -1;
        const RowState s = scan_row(x + r * n, n, row_offset + r, vocab_start, vocab_size, key,
                                    inverse_temperature, disallowed, scratch);
        const bool in_tile = !ignored && label >= vocab_start && label < vocab_start + n;
        lse.mutable_data_ptr<float>()[r] = row_logsumexp(s);
        label_logit.mutable_data_ptr<float>()[r] =
            in_tile ? static_cast<float>(x[r * n + label - vocab_start])
                    : -std::numeric_limits<float>::infinity();
        const int64_t fallback = disallowed == vocab_start && n > 1 ? vocab_start + 1 : vocab_start;
        const int64_t best = best_column(s, fallback);
        samples.mutable_data_ptr<int64_t>()[r] = best;
        best_score.mutable_data_ptr<float>()[r] =
            best == s.best_index ? s.best_score : -std::numeric_limits<float>::infinity();
      }
    });
  });
  return {lse, label_logit, best_score, samples};
}

// d loss / d logits into `grad` (which may be `logits` itself: each element is read before it
// is written). Ignored rows get exact zeros.
void step_backward_into(const at::Tensor& grad_loss, const at::Tensor& logits,
                        const at::Tensor& labels, const at::Tensor& lse, int64_t ignore_index,
                        int64_t vocab_start, const at::Tensor& grad) {
  check_generator_step_backward_args(grad_loss, logits, labels, lse, vocab_start);
  const int64_t n = logits.size(1);
  EF_DISPATCH_FLOATS(logits.scalar_type(), "generator_step_backward_cpu", [&] {
    const scalar_t* x = logits.const_data_ptr<scalar_t>();
    scalar_t* out = grad.mutable_data_ptr<scalar_t>();
    const int64_t* label_ptr = labels.const_data_ptr<int64_t>();
    const float* g = grad_loss.const_data_ptr<float>();
    const float* lse_ptr = lse.const_data_ptr<float>();
    at::parallel_for(0, logits.size(0), grain(n), [&](int64_t begin, int64_t end) {
      Scratch scratch(n);
      float* p = scratch.logits.mutable_data_ptr<float>();
      for (int64_t r = begin; r < end; ++r) {
        const int64_t label = label_ptr[r];
        scalar_t* out_row = out + r * n;
        if (label == ignore_index) {
          std::fill(out_row, out_row + n, scalar_t(0));
          continue;
        }
        const scalar_t* x_row = x + r * n;
        // The softmax, from the saved logsumexp (the cast to float32 is exact).
        const float row_lse = lse_ptr[r];
        for (int64_t c = 0; c < n; ++c) p[c] = static_cast<float>(x_row[c]) - row_lse;
        scratch.logits.exp_();
        const int64_t label_column = label - vocab_start;  // may lie outside this tile
        const float row_grad = g[r];
        for (int64_t c = 0; c < n; ++c) {
          out_row[c] = static_cast<scalar_t>((p[c] - (c == label_column ? 1.0f : 0.0f)) * row_grad);
        }
      }
    });
  });
}

at::Tensor generator_step_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& logits,
                                       const at::Tensor& labels, const at::Tensor& lse,
                                       int64_t ignore_index, int64_t vocab_start) {
  at::Tensor grad = at::empty_like(logits);
  step_backward_into(grad_loss, logits, labels, lse, ignore_index, vocab_start, grad);
  return grad;
}

void generator_step_backward_inplace_cpu(const at::Tensor& grad_loss, const at::Tensor& logits,
                                         const at::Tensor& labels, const at::Tensor& lse,
                                         int64_t ignore_index, int64_t vocab_start) {
  step_backward_into(grad_loss, logits, labels, lse, ignore_index, vocab_start, logits);
}

}  // namespace

TORCH_LIBRARY_IMPL(electra_fast, CPU, m) {
  m.impl("generator_step", &generator_step_cpu);
  m.impl("generator_step_tile", &generator_step_tile_cpu);
  m.impl("generator_step_backward", &generator_step_backward_cpu);
  m.impl("generator_step_backward_", &generator_step_backward_inplace_cpu);
}

}  // namespace electra_fast
