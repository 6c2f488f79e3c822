// The host side of an attention call, shared by the CPU twin (attention.cpp) and the CUDA
// kernels (cuda/attention.cu): q, k and v brought into a layout the kernels read, every argument
// checked (each error names the bad one), the kernels' parameters, and the results allocated.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <cmath>
#include <vector>

#include "attention.h"
#include "checks.h"

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

// `t` contiguous, 16-byte aligned and of `like`'s dtype, as the backward kernels read dO and O:
// `t` itself when it is so already.
at::Tensor dense_rows(const at::Tensor& t, const at::Tensor& like) {
  if (t.scalar_type() == like.scalar_type() && t.is_contiguous() &&
      reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0) {
    return t;
  }
  return at::empty(like.sizes(), like.options().memory_format(at::MemoryFormat::Contiguous))
      .copy_(t);
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
  const uint32_t threshold = dropout_threshold(dropout_p);
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
  p.grad_row_stride = p.heads * D;
  p.seed = seed.has_value() ? seed->const_data_ptr<int64_t>() : nullptr;
  p.scale = static_cast<float>(softmax_scale);
  p.scale_log2 = static_cast<float>(softmax_scale * 1.4426950408889634);
  p.drop_threshold = threshold;
  p.keep_scale = dropout_keep_scale(threshold);
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
  at::Tensor grad = dense_rows(grad_out, q_ready);
  at::Tensor out_ready = dense_rows(out, q_ready);
  return {std::move(call), std::move(grad), std::move(out_ready), at::Tensor(), lse.contiguous()};
}

at::Tensor new_attention_result(const AttentionCall& call, at::ScalarType dtype) {
  const auto options = call.q.options().dtype(dtype);
  return call.params.packed ? at::zeros(call.q.sizes(), options)
                            : at::empty(call.q.sizes(), options);
}

at::Tensor new_attention_lse(const AttentionCall& call) {
  return at::empty(call.q.sizes().slice(0, call.q.dim() - 1), call.q.options().dtype(at::kFloat));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> unpack_qkv(const at::Tensor& qkv, bool packed) {
  TORCH_CHECK_VALUE(qkv.dim() == (packed ? 4 : 5) && qkv.size(-3) == 3, "qkv must have shape ",
                    packed ? "[T, 3, H, D] with cu_seqlens" : "[B, L, 3, H, D]", ", got ",
                    qkv.sizes());
  return {qkv.select(-3, 0), qkv.select(-3, 1), qkv.select(-3, 2)};
}

AttentionGrads attention_backward_with(RunAttentionBackward run, const at::Tensor& grad_out,
                                       const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, const at::Tensor& out,
                                       const at::Tensor& lse,
                                       const c10::optional<at::Tensor>& lengths,
                                       const c10::optional<at::Tensor>& cu_seqlens,
                                       int64_t max_seqlen, const c10::optional<at::Tensor>& seed,
                                       double dropout_p, double softmax_scale) {
  AttentionBackwardCall b = prepare_attention_backward(
      grad_out, q, k, v, out, lse, lengths, cu_seqlens, max_seqlen, seed, dropout_p, softmax_scale);
  const at::ScalarType dtype = b.call.q.scalar_type();
  at::Tensor dq = new_attention_result(b.call, dtype);
  at::Tensor dk = new_attention_result(b.call, dtype);
  at::Tensor dv = new_attention_result(b.call, dtype);
  run(b, dq, dk, dv);
  return {dq, dk, dv};
}

at::Tensor attention_qkv_backward_with(RunAttentionBackward run, const at::Tensor& grad_out,
                                       const at::Tensor& qkv, const at::Tensor& out,
                                       const at::Tensor& lse,
                                       const c10::optional<at::Tensor>& lengths,
                                       const c10::optional<at::Tensor>& cu_seqlens,
                                       int64_t max_seqlen, const c10::optional<at::Tensor>& seed,
                                       double dropout_p, double softmax_scale) {
  const auto [q, k, v] = unpack_qkv(qkv, cu_seqlens.has_value());
  AttentionBackwardCall b = prepare_attention_backward(
      grad_out, q, k, v, out, lse, lengths, cu_seqlens, max_seqlen, seed, dropout_p, softmax_scale);
  // qkv's gradient, zeros in the packed layout as new_attention_result; its views' rows are
  // 3 * H * D apart.
  std::vector<int64_t> shape = b.call.q.sizes().vec();
  shape.insert(shape.end() - 2, 3);
  const auto options = b.call.q.options();
  at::Tensor dqkv = b.call.params.packed ? at::zeros(shape, options) : at::empty(shape, options);
  b.call.params.grad_row_stride = 3 * b.call.params.heads * b.call.params.head_dim;
  run(b, dqkv.select(-3, 0), dqkv.select(-3, 1), dqkv.select(-3, 2));
  return dqkv;
}

}  // namespace electra_fast
