// The generator step on CUDA: one block per row, one pass over the row with 16-byte loads. Each
// thread keeps an online (max, sum of exp) and its best Gumbel score; a warp-shuffle and then a
// shared-memory merge give the row's. The noise is the CPU kernel's (../sampling.h), so the same
// seed gives the same samples on both.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <utility>

#include "../checks.h"
#include "../sampling.h"

namespace electra_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

template <typename scalar_t>
struct alignas(16) Vec {
  static constexpr int kSize = 16 / sizeof(scalar_t);
  scalar_t v[kSize];
};

// Where a row's 16-byte-aligned vectors start (the columns before are read one by one) and
// how many there are. Rows of an odd-sized vocabulary start at varying alignments. Without
// `vectorize`, every column is read one by one.
template <typename scalar_t>
struct RowSplit {
  int64_t head, vectors;
  __device__ RowSplit(const scalar_t* row, int64_t n, bool vectorize = true) {
    constexpr int64_t kSize = Vec<scalar_t>::kSize;
    const int64_t misaligned = (reinterpret_cast<uintptr_t>(row) % 16) / sizeof(scalar_t);
    head = misaligned == 0 ? 0 : (kSize - misaligned < n ? kSize - misaligned : n);
    vectors = vectorize ? (n - head) / kSize : 0;
  }
};

struct StepParams {
  int64_t columns;      // n, the logits' second dimension
  int64_t vocab_start;  // the tile's first column in the vocabulary
  int64_t vocab_size;   // V, which fixes the Philox layout
  int64_t ignore_index;
  int64_t row_offset;  // the first row's index in the random stream
  float inverse_temperature;
  bool disallow_labels;
};

__device__ void add_scored_logit(RowState& s, float x, const StepParams& p, uint32_t word,
                                 int64_t v, int64_t disallowed) {
  if (v != disallowed)
    add_candidate(s, gumbel_score(x, p.inverse_temperature, gumbel_noise(word)), v);
}

// Whether a column with uniform t and a = x / T cannot reach `bound` (sampling.h:
// gumbel_skip_margin, whose margin allows for __expf's error).
__device__ bool cannot_win(float t, float a, float bound) {
  return t > __expf(a - bound + gumbel_skip_margin(fabsf(a), bound));
}

// f(j) for j = 0 .. n - 1 as compile-time constants, so that the arrays it indexes stay in
// registers (a plain loop this long is not always unrolled, and then they go to local memory).
template <int n, typename F>
__device__ __forceinline__ void for_each_column(F&& f) {
  [&]<int... J>(std::integer_sequence<int, J...>) {
    (f(std::integral_constant<int, J>{}), ...);
  }(std::make_integer_sequence<int, n>{});
}

__device__ float warp_max(float v) {
#pragma unroll
  for (int mask = 16; mask > 0; mask /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, mask));
  return v;
}

// One thread's share of the aligned body: vectors tid, tid + kThreads, ... Every vector starts
// at a column with v % 4 == kPhase (the vector size is a multiple of 4), so the Philox words
// each element needs are known at compile time.
//
// The exact noise (two logs and a division) is computed only for the columns that can still
// reach `bound`, the best exact score of the warp so far (sampling.h: gumbel_skip_margin). On
// the first trip each thread scores exactly its column of largest a - log(t) (an upper bound of
// the score, usually close), and the warp takes the best of those as its bound; after that,
// about one column in V is scored. All lanes of a warp make the same trips, so that they can
// exchange their best scores after each.
template <int kPhase, typename scalar_t>
__device__ void scan_vectors(RowState& s, const scalar_t* row, int64_t head, int64_t vectors,
                             const StepParams& p, uint64_t seed, int64_t r, int64_t disallowed) {
  constexpr int kSize = Vec<scalar_t>::kSize;
  constexpr int kGroups = (kPhase + kSize + 3) / 4;
  const Vec<scalar_t>* body = reinterpret_cast<const Vec<scalar_t>*>(row + head);
  const int lane = threadIdx.x % 32;
  auto scaled = [&](float x) { return __fmul_rn(x, p.inverse_temperature); };  // a = x / T
  auto score_exactly = [&](float x, float t, int64_t v) {
    add_candidate(s, gumbel_score(x, p.inverse_temperature, gumbel_noise_of_uniform(t)), v);
  };
  float bound = -INFINITY;
  bool first = true;
  for (int64_t k0 = threadIdx.x - lane; k0 < vectors; k0 += kThreads, first = false) {
    const int64_t k = k0 + lane;
    const bool active = k < vectors;
    const int64_t v0 = p.vocab_start + head + k * kSize;  // v0 % 4 == kPhase
    float x[kSize], t[kSize];
    int probe = -1;
    if (active) {
      const Vec<scalar_t> loaded = body[k];
      float vector_max = -INFINITY;
#pragma unroll
      for (int j = 0; j < kSize; ++j) {
        x[j] = static_cast<float>(loaded.v[j]);
        vector_max = fmaxf(vector_max, x[j]);  // fmaxf skips NaN; the sum below catches it
      }
      if (vector_max > s.max) {
        s.sum *= rescale(s.max, vector_max);
        s.max = vector_max;
      }
#pragma unroll
      for (int j = 0; j < kSize; ++j) {
        if (x[j] != -INFINITY) s.sum += expf(x[j] - s.max);
      }
      Philox4 words[kGroups];
#pragma unroll
      for (int g = 0; g < kGroups; ++g) {
        words[g] = sampling_randoms(seed, r, (v0 >> 2) + g, p.vocab_size);
      }
      for_each_column<kSize>(
          [&](auto j) { t[j] = gumbel_uniform(words[(kPhase + j) / 4].x[(kPhase + j) % 4]); });
      if (first) {
        float largest = -INFINITY, probe_x = 0.0f, probe_t = 0.0f;
        for_each_column<kSize>([&](auto j) {
          const float above = scaled(x[j]) - __logf(t[j]);  // about an upper bound of the score
          if (v0 + j != disallowed && above > largest) {
            largest = above;
            probe = j;
            probe_x = x[j];
            probe_t = t[j];
          }
        });
        if (probe >= 0) score_exactly(probe_x, probe_t, v0 + probe);
      }
    }
    if (first) bound = warp_max(s.best_score);
    bool scored = false;
    if (active) {
      for_each_column<kSize>([&](auto j) {
        if (j != probe && v0 + j != disallowed && !cannot_win(t[j], scaled(x[j]), bound)) {
          score_exactly(x[j], t[j], v0 + j);
          scored = true;
        }
      });
    }
    if (__any_sync(0xffffffffu, scored)) bound = warp_max(s.best_score);
  }
}

template <typename scalar_t>
__device__ void scan_scalar(RowState& s, const scalar_t* row, int64_t c, const StepParams& p,
                            uint64_t seed, int64_t r, int64_t disallowed) {
  const float x = static_cast<float>(row[c]);
  add_logit(s, x);
  const int64_t v = p.vocab_start + c;
  add_scored_logit(s, x, p, philox_word(sampling_randoms(seed, r, v >> 2, p.vocab_size), v & 3), v,
                   disallowed);
}

__device__ RowState shuffle_xor(const RowState& s, int mask) {
  return RowState{__shfl_xor_sync(0xffffffffu, s.max, mask),
                  __shfl_xor_sync(0xffffffffu, s.sum, mask),
                  __shfl_xor_sync(0xffffffffu, s.best_score, mask),
                  __shfl_xor_sync(0xffffffffu, s.best_index, mask)};
}

// The row's state in thread 0 (the merge order is fixed: the result is deterministic).
__device__ RowState block_merge(RowState s) {
  __shared__ RowState warp_states[kWarps];
#pragma unroll
  for (int mask = 16; mask > 0; mask /= 2) merge_row_states(s, shuffle_xor(s, mask));
  if (threadIdx.x % 32 == 0) warp_states[threadIdx.x / 32] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kWarps; ++w) merge_row_states(s, warp_states[w]);
  }
  return s;
}

// Outputs: the whole-row step writes loss/lse/samples; a tile writes lse/label_logit/best/samples.
struct StepOutputs {
  float* loss;
  float* lse;
  float* label_logit;
  float* best_score;
  int64_t* samples;
};

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    generator_step_kernel(const scalar_t* __restrict__ logits, const int64_t* __restrict__ labels,
                          const int64_t* __restrict__ seed_ptr, const StepParams p,
                          StepOutputs out) {
  const int64_t r = blockIdx.x, n = p.columns;
  const scalar_t* row = logits + r * n;
  const uint64_t seed = static_cast<uint64_t>(*seed_ptr);
  const int64_t label = labels[r];
  const bool ignored = label == p.ignore_index;
  const int64_t disallowed = p.disallow_labels && !ignored ? label : -1;
  const int64_t stream_row = p.row_offset + r;  // the row's numbers in the random stream

  RowState s = empty_row_state();
  const RowSplit<scalar_t> split(row, n);
  if (threadIdx.x < split.head) {
    scan_scalar(s, row, threadIdx.x, p, seed, stream_row, disallowed);
  }
  switch ((p.vocab_start + split.head) & 3) {
    case 0:
      scan_vectors<0>(s, row, split.head, split.vectors, p, seed, stream_row, disallowed);
      break;
    case 1:
      scan_vectors<1>(s, row, split.head, split.vectors, p, seed, stream_row, disallowed);
      break;
    case 2:
      scan_vectors<2>(s, row, split.head, split.vectors, p, seed, stream_row, disallowed);
      break;
    default:
      scan_vectors<3>(s, row, split.head, split.vectors, p, seed, stream_row, disallowed);
      break;
  }
  const int64_t tail = split.head + split.vectors * Vec<scalar_t>::kSize;
  for (int64_t c = tail + threadIdx.x; c < n; c += kThreads) {
    scan_scalar(s, row, c, p, seed, stream_row, disallowed);
  }
  s = block_merge(s);
  if (threadIdx.x != 0) return;

  const float lse = row_logsumexp(s);
  const int64_t column = label - p.vocab_start;
  // Out-of-range labels were rejected on the host; a row that still has one gets NaN.
  const bool in_row = !ignored && column >= 0 && column < n;
  const float label_logit = in_row ? static_cast<float>(row[column]) : -INFINITY;
  const int64_t first = p.vocab_start;
  const int64_t fallback = disallowed == first && n > 1 ? first + 1 : first;
  const int64_t best = best_column(s, fallback);
  out.lse[r] = lse;
  out.samples[r] = best;
  if (out.loss != nullptr) out.loss[r] = ignored ? 0.0f : (in_row ? lse - label_logit : NAN);
  if (out.label_logit != nullptr) out.label_logit[r] = label_logit;
  if (out.best_score != nullptr)
    out.best_score[r] = best == s.best_index ? s.best_score : -INFINITY;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    generator_step_backward_kernel(const float* __restrict__ grad_loss, const scalar_t* logits,
                                   const int64_t* __restrict__ labels,
                                   const float* __restrict__ lse, int64_t n, int64_t ignore_index,
                                   int64_t vocab_start, bool vectorize, scalar_t* grad) {
  // `grad` may be `logits`: every element is read before the same thread writes it. The split
  // of the logits' row serves the gradient's too: the host vectorises only when both rows
  // have the same alignment.
  constexpr int kSize = Vec<scalar_t>::kSize;
  const int64_t r = blockIdx.x;
  const scalar_t* row = logits + r * n;
  scalar_t* grad_row = grad + r * n;
  const int64_t label = labels[r];
  const bool ignored = label == ignore_index;
  const float row_lse = lse[r], g = ignored ? 0.0f : grad_loss[r];
  const int64_t label_column = ignored ? -1 : label - vocab_start;
  auto gradient = [&](float x, int64_t c) -> scalar_t {
    return ignored ? scalar_t(0.0f)
                   : static_cast<scalar_t>(logit_gradient(x, row_lse, c == label_column, g));
  };

  const RowSplit<scalar_t> split(row, n, vectorize);
  if (threadIdx.x < split.head) {
    grad_row[threadIdx.x] = gradient(static_cast<float>(row[threadIdx.x]), threadIdx.x);
  }
  const Vec<scalar_t>* body = reinterpret_cast<const Vec<scalar_t>*>(row + split.head);
  Vec<scalar_t>* grad_body = reinterpret_cast<Vec<scalar_t>*>(grad_row + split.head);
  for (int64_t k = threadIdx.x; k < split.vectors; k += kThreads) {
    const Vec<scalar_t> loaded = body[k];
    Vec<scalar_t> result;
#pragma unroll
    for (int j = 0; j < kSize; ++j) {
      result.v[j] = gradient(static_cast<float>(loaded.v[j]), split.head + k * kSize + j);
    }
    grad_body[k] = result;
  }
  for (int64_t c = split.head + split.vectors * kSize + threadIdx.x; c < n; c += kThreads) {
    grad_row[c] = gradient(static_cast<float>(row[c]), c);
  }
}

StepParams make_params(const at::Tensor& logits, double temperature, bool disallow_labels,
                       int64_t ignore_index, int64_t vocab_start, int64_t vocab_size,
                       int64_t row_offset) {
  return StepParams{logits.size(1), vocab_start, vocab_size,
                    ignore_index,   row_offset,  static_cast<float>(1.0 / temperature),
                    disallow_labels};
}

void launch_step(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& seed,
                 const StepParams& p, StepOutputs out) {
  const int64_t rows = logits.size(0);
  if (rows == 0) return;
  TORCH_CHECK_VALUE(rows <= 2147483647, "logits may have at most 2^31 - 1 rows, got ", rows);
  const c10::cuda::CUDAGuard guard(logits.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  EF_DISPATCH_FLOATS(logits.scalar_type(), "generator_step_cuda", [&] {
    generator_step_kernel<scalar_t><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
        logits.const_data_ptr<scalar_t>(), labels.const_data_ptr<int64_t>(),
        seed.const_data_ptr<int64_t>(), p, out);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::array<int64_t, 1> row_shape(const at::Tensor& logits) { return {logits.size(0)}; }

std::tuple<at::Tensor, at::Tensor, at::Tensor> generator_step_cuda(
    const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& seed, double temperature,
    bool disallow_labels, int64_t ignore_index, bool /*inplace_backward*/, int64_t row_offset) {
  EF_CHECK_DIM(logits, 2);  // before size(1), which would throw an IndexError naming no argument
  const int64_t V = logits.size(1);
  check_generator_step_args(logits, labels, seed, temperature, disallow_labels, 0, V, row_offset);
  const auto f32 = logits.options().dtype(at::kFloat);
  at::Tensor loss = at::empty(row_shape(logits), f32);
  at::Tensor lse = at::empty(row_shape(logits), f32);
  at::Tensor samples = at::empty(row_shape(logits), logits.options().dtype(at::kLong));
  launch_step(logits, labels, seed,
              make_params(logits, temperature, disallow_labels, ignore_index, 0, V, row_offset),
              StepOutputs{loss.mutable_data_ptr<float>(), lse.mutable_data_ptr<float>(), nullptr,
                          nullptr, samples.mutable_data_ptr<int64_t>()});
  return {loss, samples, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> generator_step_tile_cuda(
    const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& seed, double temperature,
    bool disallow_labels, int64_t ignore_index, int64_t vocab_start, int64_t vocab_size,
    int64_t row_offset) {
  check_generator_step_args(logits, labels, seed, temperature, disallow_labels, vocab_start,
                            vocab_size, row_offset);
  const auto f32 = logits.options().dtype(at::kFloat);
  at::Tensor lse = at::empty(row_shape(logits), f32);
  at::Tensor label_logit = at::empty(row_shape(logits), f32);
  at::Tensor best_score = at::empty(row_shape(logits), f32);
  at::Tensor samples = at::empty(row_shape(logits), logits.options().dtype(at::kLong));
  launch_step(
      logits, labels, seed,
      make_params(logits, temperature, disallow_labels, ignore_index, vocab_start, vocab_size,
                  row_offset),
      StepOutputs{nullptr, lse.mutable_data_ptr<float>(), label_logit.mutable_data_ptr<float>(),
                  best_score.mutable_data_ptr<float>(), samples.mutable_data_ptr<int64_t>()});
  return {lse, label_logit, best_score, samples};
}

void step_backward_into(const at::Tensor& grad_loss, const at::Tensor& logits,
                        const at::Tensor& labels, const at::Tensor& lse, int64_t ignore_index,
                        int64_t vocab_start, const at::Tensor& grad) {
  check_generator_step_backward_args(grad_loss, logits, labels, lse, vocab_start);
  EF_CHECK_CONTIGUOUS(grad_loss);
  EF_CHECK_CONTIGUOUS(lse);
  EF_CHECK_CONTIGUOUS(labels);
  const bool vectorize = reinterpret_cast<uintptr_t>(logits.const_data_ptr()) % 16 ==
                         reinterpret_cast<uintptr_t>(grad.const_data_ptr()) % 16;
  const int64_t rows = logits.size(0);
  if (rows == 0) return;
  const c10::cuda::CUDAGuard guard(logits.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  EF_DISPATCH_FLOATS(logits.scalar_type(), "generator_step_backward_cuda", [&] {
    generator_step_backward_kernel<scalar_t><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
        grad_loss.const_data_ptr<float>(), logits.const_data_ptr<scalar_t>(),
        labels.const_data_ptr<int64_t>(), lse.const_data_ptr<float>(), logits.size(1), ignore_index,
        vocab_start, vectorize, grad.mutable_data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor generator_step_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& logits,
                                        const at::Tensor& labels, const at::Tensor& lse,
                                        int64_t ignore_index, int64_t vocab_start) {
  at::Tensor grad = at::empty_like(logits);
  step_backward_into(grad_loss, logits, labels, lse, ignore_index, vocab_start, grad);
  return grad;
}

void generator_step_backward_inplace_cuda(const at::Tensor& grad_loss, const at::Tensor& logits,
                                          const at::Tensor& labels, const at::Tensor& lse,
                                          int64_t ignore_index, int64_t vocab_start) {
  step_backward_into(grad_loss, logits, labels, lse, ignore_index, vocab_start, logits);
}

}  // namespace

TORCH_LIBRARY_IMPL(electra_fast, CUDA, m) {
  m.impl("generator_step", &generator_step_cuda);
  m.impl("generator_step_tile", &generator_step_tile_cuda);
  m.impl("generator_step_backward", &generator_step_backward_cuda);
  m.impl("generator_step_backward_", &generator_step_backward_inplace_cuda);
}

}  // namespace electra_fast
