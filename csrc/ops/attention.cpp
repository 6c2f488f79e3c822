// Attention on the CPU: the twin of the CUDA kernels (cuda/attention.cu). Same tiles of 64 keys
// with an online softmax in fp32, same rounding of P and dS to the input dtype before they meet
// V, dO, Q and K, same dropout stream and the same recomputation of P from the saved lse in the
// backward, so that the tests that pass here leave the GPU kernels little to find. Tasks are
// (sequence, head, query tile) in the forward and (sequence, head) in the backward.
#include "attention.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "checks.h"
#include "cpu_clones.h"
#include "dispatch.h"
#include "philox_cpu.h"

namespace electra_fast {

namespace {

constexpr int kTile = kAttentionTile;
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kLog2e = 1.4426950408889634f;

// The hot loops below are vectorised and cloned per instruction set (cpu_clones.h).

// A product's rounding to the input dtype, where the GPU feeds it to a bf16/fp16 tensor core.
template <typename scalar_t>
EF_INLINE float round_to(float x) {
  return static_cast<float>(static_cast<scalar_t>(x));
}

// Eight independent partial sums of x[0, n), n a multiple of 8.
EF_INLINE float sum_of(const float* x, int64_t n) {
  float lanes[8] = {};
  for (int64_t i = 0; i < n; i += 8) {
    for (int u = 0; u < 8; ++u) lanes[u] += x[i + u];
  }
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
         ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

// out[0, n) += x[0, K) times the row-major [K, n] matrix m.
EF_INLINE void add_row_times_matrix(const float* __restrict__ x, const float* __restrict__ m,
                                    int64_t K, int64_t n, float* __restrict__ out) {
  for (int64_t k = 0; k < K; ++k) {
    const float a = x[k];
    const float* row = m + k * n;
    for (int64_t j = 0; j < n; ++j) out[j] += a * row[j];
  }
}

// 2^x for x <= 0 without a libm call, so that a loop of them vectorises: Cephes' exp2f (the
// integer part of x into the exponent bits, a degree-6 polynomial for the rest in [-1/2, 1/2];
// relative error about 2e-7). Below -125 (a masked key's -inf included) it gives 0, where
// exp2f would give a subnormal of at most 2^-125.
EF_INLINE float exp2_nonpositive(float x) {
  const bool vanishes = x < -125.0f;
  const float clamped = vanishes ? -125.0f : x;
  constexpr float kShifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float shifted = clamped + kShifter;
  const float whole = shifted - kShifter;
  const float f = clamped - whole;
  float p = 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  uint32_t shifted_bits, bits;
  std::memcpy(&shifted_bits, &shifted, 4);
  std::memcpy(&bits, &p, 4);
  constexpr uint32_t kShifterBits = 0x4B400000u;
  bits += (shifted_bits - kShifterBits) << 23;  // the integer part, two's complement
  float result;
  std::memcpy(&result, &bits, 4);
  return vanishes ? 0.0f : result;
}

// Rows [0, rows) of one head into a float buffer [rows, D], zeros past `valid`.
template <typename scalar_t>
void load_rows(const scalar_t* base, int64_t row_stride, int64_t rows, int64_t valid, int64_t D,
               float* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t d = 0; d < D; ++d) {
      dst[r * D + d] = r < valid ? static_cast<float>(base[r * row_stride + d]) : 0.0f;
    }
  }
}

// A tile of kTile rows of one head, transposed into [D, kTile] (zeros past `valid`): the
// right-hand side of a row times the tile's transpose, vectorised over the tile's rows.
template <typename scalar_t>
void load_transposed(const scalar_t* base, int64_t row_stride, int64_t valid, int64_t D,
                     float* dst) {
  for (int64_t c = 0; c < kTile; ++c) {
    for (int64_t d = 0; d < D; ++d) {
      dst[d * kTile + c] = c < valid ? static_cast<float>(base[c * row_stride + d]) : 0.0f;
    }
  }
}

// Queries whose P and dS rows meet the key tile together in the backward's dV and dK updates:
// each accumulator row is then read and written once per kQueryBlock queries. Their dropout
// flags are drawn together too, in both passes.
constexpr int64_t kQueryBlock = 4;

// Which keys survive dropout (1) or not (0) for each of the kQueryBlock queries from `query`
// on: keep[j][c] for key first + c, c < kTile (`first` a multiple of 8). The Philox blocks of
// the four queries and the tile's eight groups of keys are one batch (philox_cpu.h: with AVX2
// where the CPU has it; GCC does not vectorise Philox by itself). Queries past the sequence's
// last get flags that nobody reads.
void keep_flags(const AttentionParams& p, uint64_t seed, int64_t bh, int64_t query, int64_t first,
                float (*keep)[kTile]) {
  constexpr int kGroups = kTile / 8;
  static_assert(kQueryBlock * kGroups == kPhiloxBatch, "one batch: four queries, a key tile");
  if (!p.dropout()) {
    for (int64_t j = 0; j < kQueryBlock; ++j) std::fill(keep[j], keep[j] + kTile, 1.0f);
    return;
  }
  uint32_t groups[kPhiloxBatch], queries[kPhiloxBatch];
  for (int j = 0; j < kQueryBlock; ++j) {
    for (int g = 0; g < kGroups; ++g) {
      groups[j * kGroups + g] = static_cast<uint32_t>(first / 8 + g);
      queries[j * kGroups + g] = static_cast<uint32_t>(query + j);
    }
  }
  PhiloxBatch r;  // block (j, g) is dropout_block(seed, bh, query + j, first / 8 + g)
  philox_batch(groups, queries, kStreamAttentionDropout, static_cast<uint32_t>(bh),
               static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), r);
  // Key first + 8g + 2w + u of query j: half u (low, high) of word w of block (j, g), as
  // dropout_keeps reads it. All kTile columns: those past `cols` are not read.
  for (int j = 0; j < kQueryBlock; ++j) {
    for (int g = 0; g < kGroups; ++g) {
      for (int w = 0; w < 4; ++w) {
        const uint32_t word = r.x[w][j * kGroups + g];
        keep[j][8 * g + 2 * w] = (word & 0xffffu) >= p.drop_threshold ? 1.0f : 0.0f;
        keep[j][8 * g + 2 * w + 1] = (word >> 16) >= p.drop_threshold ? 1.0f : 0.0f;
      }
    }
  }
}

// Calls fn.template operator()<kD>() with kD = 64, the head dim of every ELECTRA size, or 0 for
// any other (read at run time). A head dim known at compile time gives the loops over it fixed
// trip counts: at B=8 L=128 H=4 fp32 with dropout, on two cores, the forward took 1.2 ms instead
// of 1.7 and the backward 3.6 instead of 4.3 (a script outside the repository), with the same
// gradients to the bit. The tests' other head dims take the run-time path.
template <typename Fn>
void with_head_dim(int64_t head_dim, Fn&& fn) {
  if (head_dim == 64) {
    fn.template operator()<64>();
  } else {
    fn.template operator()<0>();
  }
}

template <typename scalar_t, int kD>
EF_CPU_CLONES void forward_tile(const AttentionParams& p, uint64_t seed, const scalar_t* q,
                                const scalar_t* k, const scalar_t* v, scalar_t* out, float* lse,
                                int64_t task) {
  const int64_t H = p.heads, D = kD != 0 ? kD : p.head_dim;
  const int64_t m_tiles = (p.max_seqlen + kTile - 1) / kTile;
  const int64_t bh = task / m_tiles, b = bh / H, h = bh % H, m0 = (task % m_tiles) * kTile;
  const SequenceBounds s = sequence_bounds(p, b);
  const int64_t rows = std::max<int64_t>(0, std::min<int64_t>(kTile, s.length - m0));
  std::vector<float> qf(kTile * D), kt(D * kTile), vf(kTile * D), acc(kTile * D, 0.0f);
  std::vector<float> row_max(kTile, -std::numeric_limits<float>::infinity());
  std::vector<float> row_sum(kTile, 0.0f), scores(kTile);
  float keep[kQueryBlock][kTile];
  if (rows > 0)
    load_rows(q + (s.start + m0) * p.q_row_stride + h * D, p.q_row_stride, rows, rows, D,
              qf.data());
  for (int64_t n0 = 0; n0 < s.length && rows > 0; n0 += kTile) {
    const int64_t cols = std::min<int64_t>(kTile, s.length - n0);
    load_transposed(k + (s.start + n0) * p.k_row_stride + h * D, p.k_row_stride, cols, D,
                    kt.data());
    load_rows(v + (s.start + n0) * p.v_row_stride + h * D, p.v_row_stride, cols, cols, D,
              vf.data());
    for (int64_t r = 0; r < rows; ++r) {
      std::fill(scores.begin(), scores.end(), 0.0f);
      add_row_times_matrix(&qf[r * D], kt.data(), D, kTile, scores.data());
      float tile_max = row_max[r];
      for (int64_t c = 0; c < kTile; ++c) {
        scores[c] = c < cols ? scores[c] * p.scale_log2 : -std::numeric_limits<float>::infinity();
        tile_max = std::max(tile_max, scores[c]);
      }
      const float correction = std::exp2(row_max[r] - tile_max);
      row_max[r] = tile_max;
      float* a = &acc[r * D];
      for (int64_t d = 0; d < D; ++d) a[d] *= correction;
      for (int64_t c = 0; c < kTile; ++c) scores[c] = exp2_nonpositive(scores[c] - tile_max);
      // The softmax's denominator counts the dropped probabilities too.
      row_sum[r] = row_sum[r] * correction + sum_of(scores.data(), kTile);
      if (r % kQueryBlock == 0) keep_flags(p, seed, bh, m0 + r, n0, keep);
      const float* kept = keep[r % kQueryBlock];
      for (int64_t c = 0; c < cols; ++c) {
        scores[c] = kept[c] != 0.0f ? round_to<scalar_t>(scores[c]) : 0.0f;
      }
      add_row_times_matrix(scores.data(), vf.data(), cols, D, a);
    }
  }
  const int64_t last = p.packed ? rows : std::min<int64_t>(kTile, p.max_seqlen - m0);
  for (int64_t r = 0; r < last; ++r) {  // padded rows of the padded layout get zeros
    scalar_t* o = out + (s.start + m0 + r) * H * D + h * D;
    const bool real = r < rows;
    const float factor = real ? p.keep_scale / row_sum[r] : 0.0f;
    for (int64_t d = 0; d < D; ++d)
      o[d] = static_cast<scalar_t>(real ? acc[r * D + d] * factor : 0.0f);
    lse[(s.start + m0 + r) * H + h] =
        real ? (row_max[r] + std::log2(row_sum[r])) * kLn2 : std::numeric_limits<float>::infinity();
  }
}

// acc[c, 0, D) += sum_j coefficient[j, c] * rows[j][0, D) for the tile's keys c < cols.
EF_INLINE void add_rank_block(const float (*coefficient)[kTile], const float* const* rows,
                              int64_t cols, int64_t D, float* __restrict__ acc) {
  for (int64_t c = 0; c < cols; ++c) {
    const float a0 = coefficient[0][c], a1 = coefficient[1][c];
    const float a2 = coefficient[2][c], a3 = coefficient[3][c];
    float* __restrict__ dst = acc + c * D;
    for (int64_t d = 0; d < D; ++d) {
      dst[d] += ((a0 * rows[0][d] + a1 * rows[1][d]) + (a2 * rows[2][d] + a3 * rows[3][d]));
    }
  }
}

template <typename scalar_t, int kD>
EF_CPU_CLONES void backward_head(const AttentionParams& p, uint64_t seed, const scalar_t* grad_out,
                                 const scalar_t* q, const scalar_t* k, const scalar_t* v,
                                 const float* lse, const float* grad_dot_out, scalar_t* dq,
                                 scalar_t* dk, scalar_t* dv, int64_t bh) {
  static_assert(kQueryBlock == 4, "add_rank_block takes four rows");
  const int64_t H = p.heads, D = kD != 0 ? kD : p.head_dim, b = bh / H, h = bh % H;
  const SequenceBounds s = sequence_bounds(p, b);
  const int64_t n = s.length;
  std::vector<float> qf(n * D), gf(n * D), dq_acc(n * D, 0.0f), zeros(D, 0.0f);
  std::vector<float> kf(kTile * D), kt(D * kTile), vt(D * kTile), dk_acc(kTile * D),
      dv_acc(kTile * D);
  float probs[kQueryBlock][kTile], d_scores[kQueryBlock][kTile], d_probs[kTile];
  float keep[kQueryBlock][kTile];
  load_rows(q + s.start * p.q_row_stride + h * D, p.q_row_stride, n, n, D, qf.data());
  load_rows(grad_out + s.start * H * D + h * D, H * D, n, n, D, gf.data());
  for (int64_t n0 = 0; n0 < n; n0 += kTile) {
    const int64_t cols = std::min<int64_t>(kTile, n - n0);
    const scalar_t* k_rows = k + (s.start + n0) * p.k_row_stride + h * D;
    load_rows(k_rows, p.k_row_stride, kTile, cols, D, kf.data());
    load_transposed(k_rows, p.k_row_stride, cols, D, kt.data());
    load_transposed(v + (s.start + n0) * p.v_row_stride + h * D, p.v_row_stride, cols, D,
                    vt.data());
    std::fill(dk_acc.begin(), dk_acc.end(), 0.0f);
    std::fill(dv_acc.begin(), dv_acc.end(), 0.0f);
    for (int64_t i0 = 0; i0 < n; i0 += kQueryBlock) {
      keep_flags(p, seed, bh, i0, n0, keep);
      const float* q_rows[kQueryBlock];
      const float* g_rows[kQueryBlock];
      for (int64_t j = 0; j < kQueryBlock; ++j) {
        const int64_t i = i0 + j;
        // Past the last query: zero coefficients on a zero row.
        q_rows[j] = g_rows[j] = zeros.data();
        std::fill(probs[j], probs[j] + kTile, 0.0f);
        std::fill(d_scores[j], d_scores[j] + kTile, 0.0f);
        if (i >= n) continue;
        q_rows[j] = &qf[i * D];
        g_rows[j] = &gf[i * D];
        const float row_lse = lse[(s.start + i) * H + h] * kLog2e;
        const float row_dot = grad_dot_out[(s.start + i) * H + h];
        float* score = probs[j];
        add_row_times_matrix(q_rows[j], kt.data(), D, kTile, score);
        std::fill(d_probs, d_probs + kTile, 0.0f);
        add_row_times_matrix(g_rows[j], vt.data(), D, kTile, d_probs);
        for (int64_t c = 0; c < kTile; ++c) {
          score[c] = c < cols ? exp2_nonpositive(score[c] * p.scale_log2 - row_lse) : 0.0f;
        }
        for (int64_t c = 0; c < cols; ++c) {
          const bool kept = keep[j][c] != 0.0f;
          // dS = P (dP' - D_i), dP' the gradient reaching the dropped-out probability.
          d_scores[j][c] =
              round_to<scalar_t>(score[c] * ((kept ? d_probs[c] * p.keep_scale : 0.0f) - row_dot));
          score[c] = kept ? round_to<scalar_t>(score[c]) : 0.0f;
        }
        add_row_times_matrix(d_scores[j], kf.data(), cols, D, &dq_acc[i * D]);
      }
      add_rank_block(probs, g_rows, cols, D, dv_acc.data());
      add_rank_block(d_scores, q_rows, cols, D, dk_acc.data());
    }
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t at = (s.start + n0 + c) * p.grad_row_stride + h * D;
      for (int64_t d = 0; d < D; ++d) {
        dk[at + d] = static_cast<scalar_t>(dk_acc[c * D + d] * p.scale);
        dv[at + d] = static_cast<scalar_t>(dv_acc[c * D + d] * p.keep_scale);
      }
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t d = 0; d < D; ++d) {
      dq[(s.start + i) * p.grad_row_stride + h * D + d] =
          static_cast<scalar_t>(dq_acc[i * D + d] * p.scale);
    }
  }
  if (!p.packed) {  // the padded rows' gradients
    for (int64_t i = n; i < p.max_seqlen; ++i) {
      for (int64_t d = 0; d < D; ++d) {
        const int64_t at = (s.start + i) * p.grad_row_stride + h * D + d;
        dq[at] = dk[at] = dv[at] = static_cast<scalar_t>(0.0f);
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> attention_forward_cpu(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const c10::optional<at::Tensor>& lengths, const c10::optional<at::Tensor>& cu_seqlens,
    int64_t max_seqlen, const c10::optional<at::Tensor>& seed, double dropout_p,
    double softmax_scale) {
  const AttentionCall call = prepare_attention(q_in, k_in, v_in, lengths, cu_seqlens, max_seqlen,
                                               seed, dropout_p, softmax_scale);
  const AttentionParams& p = call.params;
  const at::Tensor& q = call.q;
  at::Tensor out = new_attention_result(call, q.scalar_type());
  at::Tensor lse = new_attention_lse(call);
  const uint64_t key = p.philox_key();
  const int64_t tasks = p.batch * p.heads * ((p.max_seqlen + kTile - 1) / kTile);
  EF_DISPATCH_FLOATS(q.scalar_type(), "attention_forward_cpu", [&] {
    with_head_dim(p.head_dim, [&]<int kD>() {
      at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          forward_tile<scalar_t, kD>(
              p, key, q.const_data_ptr<scalar_t>(), call.k.const_data_ptr<scalar_t>(),
              call.v.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
              lse.mutable_data_ptr<float>(), task);
        }
      });
    });
  });
  return {out, lse};
}

// rowsum(dO * O) in fp32 over each (row, head): the D_i of the backward (attention.h).
at::Tensor attention_grad_dot_out_cpu(const at::Tensor& grad, const at::Tensor& out) {
  at::Tensor result =
      at::empty(grad.sizes().slice(0, grad.dim() - 1), grad.options().dtype(at::kFloat));
  const int64_t D = grad.size(-1), pairs = result.numel();
  EF_DISPATCH_FLOATS(grad.scalar_type(), "attention_grad_dot_out_cpu", [&] {
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* o = out.const_data_ptr<scalar_t>();
    float* r = result.mutable_data_ptr<float>();
    at::parallel_for(0, pairs, 2048 / D + 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        float sum = 0.0f;
        for (int64_t d = 0; d < D; ++d) {
          sum += static_cast<float>(g[i * D + d]) * static_cast<float>(o[i * D + d]);
        }
        r[i] = sum;
      }
    });
  });
  return result;
}

// The backward kernels over a prepared call (a RunAttentionBackward, attention.h).
void run_backward_cpu(AttentionBackwardCall& b, const at::Tensor& dq, const at::Tensor& dk,
                      const at::Tensor& dv) {
  b.grad_dot_out = attention_grad_dot_out_cpu(b.grad_out, b.out);
  const AttentionCall& call = b.call;
  const AttentionParams& p = call.params;
  const uint64_t key = p.philox_key();
  EF_DISPATCH_FLOATS(call.q.scalar_type(), "attention_backward_cpu", [&] {
    with_head_dim(p.head_dim, [&]<int kD>() {
      at::parallel_for(0, p.batch * p.heads, 1, [&](int64_t begin, int64_t end) {
        for (int64_t bh = begin; bh < end; ++bh) {
          backward_head<scalar_t, kD>(
              p, key, b.grad_out.const_data_ptr<scalar_t>(), call.q.const_data_ptr<scalar_t>(),
              call.k.const_data_ptr<scalar_t>(), call.v.const_data_ptr<scalar_t>(),
              b.lse.const_data_ptr<float>(), b.grad_dot_out.const_data_ptr<float>(),
              dq.mutable_data_ptr<scalar_t>(), dk.mutable_data_ptr<scalar_t>(),
              dv.mutable_data_ptr<scalar_t>(), bh);
        }
      });
    });
  });
}

AttentionGrads attention_backward_cpu(const at::Tensor& grad_out, const at::Tensor& q,
                                      const at::Tensor& k, const at::Tensor& v,
                                      const at::Tensor& out, const at::Tensor& lse,
                                      const c10::optional<at::Tensor>& lengths,
                                      const c10::optional<at::Tensor>& cu_seqlens,
                                      int64_t max_seqlen, const c10::optional<at::Tensor>& seed,
                                      double dropout_p, double softmax_scale) {
  return attention_backward_with(run_backward_cpu, grad_out, q, k, v, out, lse, lengths, cu_seqlens,
                                 max_seqlen, seed, dropout_p, softmax_scale);
}

std::tuple<at::Tensor, at::Tensor> attention_qkv_forward_cpu(
    const at::Tensor& qkv, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen,
    const c10::optional<at::Tensor>& seed, double dropout_p, double softmax_scale) {
  const auto [q, k, v] = unpack_qkv(qkv, cu_seqlens.has_value());
  return attention_forward_cpu(q, k, v, lengths, cu_seqlens, max_seqlen, seed, dropout_p,
                               softmax_scale);
}

at::Tensor attention_qkv_backward_cpu(const at::Tensor& grad_out, const at::Tensor& qkv,
                                      const at::Tensor& out, const at::Tensor& lse,
                                      const c10::optional<at::Tensor>& lengths,
                                      const c10::optional<at::Tensor>& cu_seqlens,
                                      int64_t max_seqlen, const c10::optional<at::Tensor>& seed,
                                      double dropout_p, double softmax_scale) {
  return attention_qkv_backward_with(run_backward_cpu, grad_out, qkv, out, lse, lengths, cu_seqlens,
                                     max_seqlen, seed, dropout_p, softmax_scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(electra_fast, CPU, m) {
  m.impl("attention_forward", &attention_forward_cpu);
  m.impl("attention_backward", &attention_backward_cpu);
  m.impl("attention_qkv_forward", &attention_qkv_forward_cpu);
  m.impl("attention_qkv_backward", &attention_qkv_backward_cpu);
}

}  // namespace electra_fast
