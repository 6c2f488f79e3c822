// Attention on the CPU: the twin of the CUDA kernels (cuda/attention.cu). Same tiles of 64 keys
// with an online softmax in fp32, same rounding of P and dS to the input dtype before they meet
// V, dO, Q and K, same dropout stream and the same recomputation of P from the saved lse in the
// backward, so that the tests that pass here leave the GPU kernels little to find. Tasks are
// (sequence, head, query tile) in the forward and (sequence, head) in the backward.
#include "attention.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "checks.h"
#include "dispatch.h"

namespace electra_fast {

namespace {

bool readable_rows(const at::Tensor& t) {
  const int64_t D = t.size(-1), H = t.size(-2);
  if (t.stride(-1) != 1 || t.stride(-2) != D) return false;
  const int64_t row_stride = t.stride(-3);
  if (row_stride < H * D || row_stride % 8 != 0) return false;
  if (t.dim() == 4 && t.size(0) > 1 && t.stride(0) != t.size(1) * row_stride) return false;
  return reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
}

void check_index_tensor(const at::Tensor& t, const char* name, const at::Tensor& q) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kInt, name, " must be int32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1 && t.is_contiguous(), name,
                    " must be a contiguous 1-D tensor, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == q.device(), name, " must be on q's device ", q.device(), ", got ",
                    t.device());
}

// `t` itself when its elements are adjacent, its heads D apart, its rows (the token dimensions,
// flattened) evenly spaced at a multiple of 8 elements and its data 16-byte aligned; else a
// contiguous copy (a fresh allocation is aligned).
at::Tensor kernel_layout(const at::Tensor& t) {
  if (t.dim() >= 3 && readable_rows(t)) return t;
  return at::empty(t.sizes(), t.options().memory_format(at::MemoryFormat::Contiguous)).copy_(t);
}

// q, k and v already went through kernel_layout.
AttentionParams make_attention_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                      const c10::optional<at::Tensor>& lengths,
                                      const c10::optional<at::Tensor>& cu_seqlens,
                                      int64_t max_seqlen, const c10::optional<at::Tensor>& seed,
                                      double dropout_p, double softmax_scale) {
  const bool packed = cu_seqlens.has_value();
  TORCH_CHECK_VALUE(q.dim() == (packed ? 3 : 4), "q must have shape ",
                    packed ? "[T, H, D] with cu_seqlens" : "[B, L, H, D]", ", got ", q.sizes());
  EF_CHECK_DTYPE(q,
                 q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16 ||
                     q.scalar_type() == at::kHalf,
                 "float32, bfloat16 or float16");
  for (const at::Tensor* t : {&k, &v}) {
    TORCH_CHECK_VALUE(
        t->sizes() == q.sizes() && t->scalar_type() == q.scalar_type() && t->device() == q.device(),
        t == &k ? "k" : "v", " must match q (", q.sizes(), ", ", q.scalar_type(), ", ", q.device(),
        "), got (", t->sizes(), ", ", t->scalar_type(), ", ", t->device(), ")");
  }
  const int64_t D = q.size(-1);
  TORCH_CHECK_VALUE(D >= 8 && D % 8 == 0, "the head dimension must be a multiple of 8, got ", D);
  TORCH_CHECK_VALUE(0.0 <= dropout_p && dropout_p < 1.0, "dropout_p must be in [0, 1), got ",
                    dropout_p);
  TORCH_CHECK_VALUE(std::isfinite(softmax_scale), "softmax_scale must be finite, got ",
                    softmax_scale);
  const double threshold = std::min(65535.0, std::nearbyint(dropout_p * 65536.0));
  TORCH_CHECK_VALUE(seed.has_value() || threshold == 0,
                    "seed (the Philox key) is required with dropout_p=", dropout_p);
  if (seed.has_value()) {
    EF_CHECK_DIM(*seed, 0);
    EF_CHECK_DTYPE(*seed, seed->scalar_type() == at::kLong, "int64");
    EF_CHECK_DEVICE(*seed, q.device());
  }

  AttentionParams p{};
  p.packed = packed;
  p.heads = q.size(-2);
  p.head_dim = D;
  if (packed) {
    TORCH_CHECK_VALUE(!lengths.has_value(),
                      "give lengths (padded layout) or cu_seqlens (packed), not both");
    check_index_tensor(*cu_seqlens, "cu_seqlens", q);
    TORCH_CHECK_VALUE(cu_seqlens->size(0) >= 2,
                      "cu_seqlens must have shape [B + 1] with B >= 1, "
                      "got ",
                      cu_seqlens->sizes());
    TORCH_CHECK_VALUE(max_seqlen >= 1, "max_seqlen must be at least 1, got ", max_seqlen);
    p.batch = cu_seqlens->size(0) - 1;
    p.max_seqlen = max_seqlen;
    p.total_rows = q.size(0);
    p.cu_seqlens = cu_seqlens->const_data_ptr<int32_t>();
  } else {
    p.batch = q.size(0);
    TORCH_CHECK_VALUE(max_seqlen == q.size(1), "max_seqlen must be L=", q.size(1),
                      " for the padded layout, got ", max_seqlen);
    p.max_seqlen = q.size(1);
    p.total_rows = p.batch * p.max_seqlen;
    if (lengths.has_value()) {
      check_index_tensor(*lengths, "lengths", q);
      EF_CHECK_SHAPE(*lengths, p.batch);
      p.lengths = lengths->const_data_ptr<int32_t>();
    }
  }
  p.q_row_stride = q.stride(-3);
  p.k_row_stride = k.stride(-3);
  p.v_row_stride = v.stride(-3);
  p.seed = seed.has_value() ? seed->const_data_ptr<int64_t>() : nullptr;
  p.scale = static_cast<float>(softmax_scale);
  p.scale_log2 = static_cast<float>(softmax_scale * 1.4426950408889634);
  p.drop_threshold = static_cast<uint32_t>(threshold);
  p.keep_scale = static_cast<float>(65536.0 / (65536.0 - threshold));
  return p;
}

}  // namespace

AttentionCall prepare_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const c10::optional<at::Tensor>& lengths,
                                const c10::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen,
                                const c10::optional<at::Tensor>& seed, double dropout_p,
                                double softmax_scale) {
  AttentionCall call{kernel_layout(q), kernel_layout(k), kernel_layout(v), {}};
  call.params = make_attention_params(call.q, call.k, call.v, lengths, cu_seqlens, max_seqlen, seed,
                                      dropout_p, softmax_scale);
  return call;
}

AttentionBackwardCall prepare_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const c10::optional<at::Tensor>& lengths,
    const c10::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen,
    const c10::optional<at::Tensor>& seed, double dropout_p, double softmax_scale) {
  AttentionCall call =
      prepare_attention(q, k, v, lengths, cu_seqlens, max_seqlen, seed, dropout_p, softmax_scale);
  const at::Tensor& q_ready = call.q;
  TORCH_CHECK_VALUE(grad_out.sizes() == q_ready.sizes() && out.sizes() == q_ready.sizes(),
                    "grad_out and out must have q's shape ", q_ready.sizes(), ", got ",
                    grad_out.sizes(), " and ", out.sizes());
  EF_CHECK_SHAPE(lse, q_ready.sizes().slice(0, q_ready.dim() - 1));
  EF_CHECK_DTYPE(lse, lse.scalar_type() == at::kFloat, "float32");
  EF_CHECK_DEVICE(lse, q_ready.device());
  EF_CHECK_DEVICE(grad_out, q_ready.device());
  EF_CHECK_DEVICE(out, q_ready.device());
  // Contiguous and 16-byte aligned, as the kernels read dO.
  at::Tensor grad =
      at::empty(q_ready.sizes(), q_ready.options().memory_format(at::MemoryFormat::Contiguous))
          .copy_(grad_out);
  at::Tensor grad_dot_out =
      at::sum(at::mul(grad.to(at::kFloat), out.to(at::kFloat)), {-1}).contiguous();
  return {std::move(call), std::move(grad), std::move(grad_dot_out), lse.contiguous()};
}

at::Tensor new_attention_result(const AttentionCall& call, at::ScalarType dtype) {
  const auto options = call.q.options().dtype(dtype);
  return call.params.packed ? at::zeros(call.q.sizes(), options)
                            : at::empty(call.q.sizes(), options);
}

at::Tensor new_attention_lse(const AttentionCall& call) {
  return at::empty(call.q.sizes().slice(0, call.q.dim() - 1), call.q.options().dtype(at::kFloat));
}

namespace {

constexpr int kTile = kAttentionTile;
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kLog2e = 1.4426950408889634f;

// A product's rounding to the input dtype, where the GPU feeds it to a bf16/fp16 tensor core.
template <typename scalar_t>
float round_to(float x) {
  return static_cast<float>(static_cast<scalar_t>(x));
}

// Eight independent partial sums: the compiler vectorises them without reassociating anything.
float dot(const float* a, const float* b, int64_t n) {
  float lanes[8] = {};
  for (int64_t d = 0; d < n; d += 8) {
    for (int u = 0; u < 8; ++u) lanes[u] += a[d + u] * b[d + u];
  }
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
         ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

void axpy(float a, const float* x, float* y, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] += a * x[d];
}

// Rows [first, first + rows) of one head into a float buffer, zeros past `valid`.
template <typename scalar_t>
void load_rows(const scalar_t* base, int64_t row_stride, int64_t rows, int64_t valid, int64_t D,
               float* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t d = 0; d < D; ++d) {
      dst[r * D + d] = r < valid ? static_cast<float>(base[r * row_stride + d]) : 0.0f;
    }
  }
}

// Which of a query's `cols` keys starting at `first` survive dropout (1) or not (0).
void keep_flags(const AttentionParams& p, uint64_t seed, int64_t bh, int64_t query, int64_t first,
                int64_t cols, float* keep) {
  if (!p.dropout()) {
    std::fill(keep, keep + cols, 1.0f);
    return;
  }
  for (int64_t c0 = 0; c0 < cols; c0 += 8) {  // `first` is a multiple of 8
    const Philox4 block = dropout_block(seed, bh, query, (first + c0) / 8);
    for (int64_t c = c0; c < std::min(cols, c0 + 8); ++c) {
      keep[c] = dropout_keeps(block, first + c, p.drop_threshold) ? 1.0f : 0.0f;
    }
  }
}

template <typename scalar_t>
void forward_tile(const AttentionParams& p, uint64_t seed, const scalar_t* q, const scalar_t* k,
                  const scalar_t* v, scalar_t* out, float* lse, int64_t task) {
  const int64_t H = p.heads, D = p.head_dim;
  const int64_t m_tiles = (p.max_seqlen + kTile - 1) / kTile;
  const int64_t bh = task / m_tiles, b = bh / H, h = bh % H, m0 = (task % m_tiles) * kTile;
  const SequenceBounds s = sequence_bounds(p, b);
  const int64_t rows = std::max<int64_t>(0, std::min<int64_t>(kTile, s.length - m0));
  std::vector<float> qf(kTile * D), kf(kTile * D), vf(kTile * D), acc(kTile * D, 0.0f);
  std::vector<float> row_max(kTile, -std::numeric_limits<float>::infinity());
  std::vector<float> row_sum(kTile, 0.0f), scores(kTile), keep(kTile);
  if (rows > 0)
    load_rows(q + (s.start + m0) * p.q_row_stride + h * D, p.q_row_stride, rows, rows, D,
              qf.data());
  for (int64_t n0 = 0; n0 < s.length && rows > 0; n0 += kTile) {
    const int64_t cols = std::min<int64_t>(kTile, s.length - n0);
    load_rows(k + (s.start + n0) * p.k_row_stride + h * D, p.k_row_stride, cols, cols, D,
              kf.data());
    load_rows(v + (s.start + n0) * p.v_row_stride + h * D, p.v_row_stride, cols, cols, D,
              vf.data());
    for (int64_t r = 0; r < rows; ++r) {
      float tile_max = row_max[r];
      for (int64_t c = 0; c < cols; ++c) {
        scores[c] = dot(&qf[r * D], &kf[c * D], D) * p.scale_log2;
        tile_max = std::max(tile_max, scores[c]);
      }
      const float correction = std::exp2(row_max[r] - tile_max);
      row_max[r] = tile_max;
      float* a = &acc[r * D];
      for (int64_t d = 0; d < D; ++d) a[d] *= correction;
      float sum = 0.0f;
      keep_flags(p, seed, bh, m0 + r, n0, cols, keep.data());
      for (int64_t c = 0; c < cols; ++c) {
        const float prob = std::exp2(scores[c] - tile_max);
        sum += prob;  // the softmax's denominator counts the dropped probabilities too
        if (keep[c] != 0.0f) axpy(round_to<scalar_t>(prob), &vf[c * D], a, D);
      }
      row_sum[r] = row_sum[r] * correction + sum;
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

template <typename scalar_t>
void backward_head(const AttentionParams& p, uint64_t seed, const scalar_t* grad_out,
                   const scalar_t* q, const scalar_t* k, const scalar_t* v, const float* lse,
                   const float* grad_dot_out, scalar_t* dq, scalar_t* dk, scalar_t* dv,
                   int64_t bh) {
  const int64_t H = p.heads, D = p.head_dim, b = bh / H, h = bh % H;
  const SequenceBounds s = sequence_bounds(p, b);
  const int64_t n = s.length;
  std::vector<float> qf(n * D), gf(n * D), dq_acc(n * D, 0.0f);
  std::vector<float> kf(kTile * D), vf(kTile * D), dk_acc(kTile * D), dv_acc(kTile * D);
  std::vector<float> keep(kTile);
  load_rows(q + s.start * p.q_row_stride + h * D, p.q_row_stride, n, n, D, qf.data());
  load_rows(grad_out + s.start * H * D + h * D, H * D, n, n, D, gf.data());
  for (int64_t n0 = 0; n0 < n; n0 += kTile) {
    const int64_t cols = std::min<int64_t>(kTile, n - n0);
    load_rows(k + (s.start + n0) * p.k_row_stride + h * D, p.k_row_stride, cols, cols, D,
              kf.data());
    load_rows(v + (s.start + n0) * p.v_row_stride + h * D, p.v_row_stride, cols, cols, D,
              vf.data());
    std::fill(dk_acc.begin(), dk_acc.end(), 0.0f);
    std::fill(dv_acc.begin(), dv_acc.end(), 0.0f);
    for (int64_t i = 0; i < n; ++i) {
      const float row_lse = lse[(s.start + i) * H + h] * kLog2e;
      const float row_dot = grad_dot_out[(s.start + i) * H + h];
      keep_flags(p, seed, bh, i, n0, cols, keep.data());
      for (int64_t c = 0; c < cols; ++c) {
        const float prob = std::exp2(dot(&qf[i * D], &kf[c * D], D) * p.scale_log2 - row_lse);
        const float d_prob = dot(&gf[i * D], &vf[c * D], D);
        const bool kept = keep[c] != 0.0f;
        // dS = P (dP' - D_i), dP' the gradient reaching the dropped-out probability.
        const float d_score =
            round_to<scalar_t>(prob * ((kept ? d_prob * p.keep_scale : 0.0f) - row_dot));
        if (kept) axpy(round_to<scalar_t>(prob), &gf[i * D], &dv_acc[c * D], D);
        axpy(d_score, &qf[i * D], &dk_acc[c * D], D);
        axpy(d_score, &kf[c * D], &dq_acc[i * D], D);
      }
    }
    for (int64_t c = 0; c < cols; ++c) {
      for (int64_t d = 0; d < D; ++d) {
        dk[(s.start + n0 + c) * H * D + h * D + d] =
            static_cast<scalar_t>(dk_acc[c * D + d] * p.scale);
        dv[(s.start + n0 + c) * H * D + h * D + d] =
            static_cast<scalar_t>(dv_acc[c * D + d] * p.keep_scale);
      }
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t d = 0; d < D; ++d) {
      dq[(s.start + i) * H * D + h * D + d] = static_cast<scalar_t>(dq_acc[i * D + d] * p.scale);
    }
  }
  if (!p.packed) {  // the padded rows' gradients
    for (int64_t i = n; i < p.max_seqlen; ++i) {
      for (int64_t d = 0; d < D; ++d) {
        const int64_t at = (s.start + i) * H * D + h * D + d;
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
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        forward_tile<scalar_t>(p, key, q.const_data_ptr<scalar_t>(),
                               call.k.const_data_ptr<scalar_t>(), call.v.const_data_ptr<scalar_t>(),
                               out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<float>(),
                               task);
      }
    });
  });
  return {out, lse};
}

AttentionGrads attention_backward_cpu(const at::Tensor& grad_out, const at::Tensor& q_in,
                                      const at::Tensor& k_in, const at::Tensor& v_in,
                                      const at::Tensor& out, const at::Tensor& lse,
                                      const c10::optional<at::Tensor>& lengths,
                                      const c10::optional<at::Tensor>& cu_seqlens,
                                      int64_t max_seqlen, const c10::optional<at::Tensor>& seed,
                                      double dropout_p, double softmax_scale) {
  const AttentionBackwardCall b =
      prepare_attention_backward(grad_out, q_in, k_in, v_in, out, lse, lengths, cu_seqlens,
                                 max_seqlen, seed, dropout_p, softmax_scale);
  const AttentionCall& call = b.call;
  const AttentionParams& p = call.params;
  const at::Tensor& q = call.q;
  at::Tensor dq = new_attention_result(call, q.scalar_type());
  at::Tensor dk = new_attention_result(call, q.scalar_type());
  at::Tensor dv = new_attention_result(call, q.scalar_type());
  const uint64_t key = p.philox_key();
  EF_DISPATCH_FLOATS(q.scalar_type(), "attention_backward_cpu", [&] {
    at::parallel_for(0, p.batch * p.heads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh) {
        backward_head<scalar_t>(p, key, b.grad_out.const_data_ptr<scalar_t>(),
                                q.const_data_ptr<scalar_t>(), call.k.const_data_ptr<scalar_t>(),
                                call.v.const_data_ptr<scalar_t>(), b.lse.const_data_ptr<float>(),
                                b.grad_dot_out.const_data_ptr<float>(),
                                dq.mutable_data_ptr<scalar_t>(), dk.mutable_data_ptr<scalar_t>(),
                                dv.mutable_data_ptr<scalar_t>(), bh);
      }
    });
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(electra_fast, CPU, m) {
  m.impl("attention_forward", &attention_forward_cpu);
  m.impl("attention_backward", &attention_backward_cpu);
}

}  // namespace electra_fast
