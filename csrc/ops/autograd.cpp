// Autograd for the ops an encoder calls in every layer (attention_forward or attention_qkv_forward,
// dropout_add_layer_norm, bias_gelu), in C++: one node per call whose backward calls the op's
// backward. A formula registered from Python (torch.library.register_autograd) runs Python at every
// forward call (the schema's defaults filled in, setup_context) and every backward, and allocates
// zero gradients for the outputs that need none (the log-sum-exp, the statistics) before each
// backward; on a GPU the host is what limits a small model's eager step
// (benchmarks/bench_step_host.py). A build without this file counts as out of date
// (electra_fast/_extension.py), so there is no Python formula to fall back on.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

namespace electra_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardSchema = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, int64_t, const std::optional<at::Tensor>&, double, double);
using BackwardSchema = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, int64_t,
    const std::optional<at::Tensor>&, double, double);

template <typename Schema>
c10::TypedOperatorHandle<Schema> handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Schema>();
}

// An optional input saved as a possibly undefined tensor, and back.
at::Tensor or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? *t : at::Tensor();
}
std::optional<at::Tensor> or_none(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

class Attention : public torch::autograd::Function<Attention> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, const std::optional<at::Tensor>& lengths,
                               const std::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen,
                               const std::optional<at::Tensor>& seed, double dropout_p,
                               double scale) {
    static const auto op = handle<ForwardSchema>("electra_fast::attention_forward");
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, lse] = op.call(q, k, v, lengths, cu_seqlens, max_seqlen, seed, dropout_p, scale);
    ctx->save_for_backward(
        {q, k, v, out, lse, or_undefined(lengths), or_undefined(cu_seqlens), or_undefined(seed)});
    ctx->saved_data["max_seqlen"] = max_seqlen;
    ctx->saved_data["dropout_p"] = dropout_p;
    ctx->saved_data["scale"] = scale;
    ctx->mark_non_differentiable({lse});
    ctx->set_materialize_grads(false);  // no zero tensor for lse's gradient, which is never used
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = handle<BackwardSchema>("electra_fast::attention_backward");
    // One gradient per forward input: q, k, v, then six that have none.
    variable_list result(9);
    const at::Tensor& grad_out = grads[0];
    if (!grad_out.defined()) return result;  // out did not reach the loss
    const variable_list saved = ctx->get_saved_variables();
    auto [dq, dk, dv] =
        op.call(grad_out, saved[0], saved[1], saved[2], saved[3], saved[4], or_none(saved[5]),
                or_none(saved[6]), ctx->saved_data["max_seqlen"].toInt(), or_none(saved[7]),
                ctx->saved_data["dropout_p"].toDouble(), ctx->saved_data["scale"].toDouble());
    result[0] = dq;
    result[1] = dk;
    result[2] = dv;
    return result;
  }
};

using QkvForwardSchema = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, int64_t,
    const std::optional<at::Tensor>&, double, double);
using QkvBackwardSchema = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                     const at::Tensor&, const std::optional<at::Tensor>&,
                                     const std::optional<at::Tensor>&, int64_t,
                                     const std::optional<at::Tensor>&, double, double);

// Attention over the fused projection's qkv: one gradient, qkv's, from one backward call.
class AttentionQkv : public torch::autograd::Function<AttentionQkv> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& qkv,
                               const std::optional<at::Tensor>& lengths,
                               const std::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen,
                               const std::optional<at::Tensor>& seed, double dropout_p,
                               double scale) {
    static const auto op = handle<QkvForwardSchema>("electra_fast::attention_qkv_forward");
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, lse] = op.call(qkv, lengths, cu_seqlens, max_seqlen, seed, dropout_p, scale);
    ctx->save_for_backward(
        {qkv, out, lse, or_undefined(lengths), or_undefined(cu_seqlens), or_undefined(seed)});
    ctx->saved_data["max_seqlen"] = max_seqlen;
    ctx->saved_data["dropout_p"] = dropout_p;
    ctx->saved_data["scale"] = scale;
    ctx->mark_non_differentiable({lse});
    ctx->set_materialize_grads(false);
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = handle<QkvBackwardSchema>("electra_fast::attention_qkv_backward");
    variable_list result(7);  // qkv's gradient, then six that have none
    if (!grads[0].defined()) return result;
    const variable_list saved = ctx->get_saved_variables();
    result[0] =
        op.call(grads[0], saved[0], saved[1], saved[2], or_none(saved[3]), or_none(saved[4]),
                ctx->saved_data["max_seqlen"].toInt(), or_none(saved[5]),
                ctx->saved_data["dropout_p"].toDouble(), ctx->saved_data["scale"].toDouble());
    return result;
  }
};

using NormSchema = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, double, double, bool);
using NormBackwardSchema = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
    const std::optional<at::Tensor>&, double);

class DropoutAddLayerNorm : public torch::autograd::Function<DropoutAddLayerNorm> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x,
                               const at::Tensor& residual, const at::Tensor& weight,
                               const at::Tensor& bias, const std::optional<at::Tensor>& x_bias,
                               const std::optional<at::Tensor>& seed, double dropout_p, double eps,
                               bool with_out_x) {
    static const auto op = handle<NormSchema>("electra_fast::dropout_add_layer_norm");
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, mean, rstd, out_x] =
        op.call(x, residual, weight, bias, x_bias, seed, dropout_p, eps, with_out_x);
    // The sum is recomputed from x and residual in the backward, not stored.
    ctx->save_for_backward(
        {x, residual, weight, or_undefined(x_bias), mean, rstd, or_undefined(seed)});
    ctx->saved_data["dropout_p"] = dropout_p;
    ctx->mark_non_differentiable(with_out_x ? variable_list{mean, rstd}
                                            : variable_list{mean, rstd, out_x});
    ctx->set_materialize_grads(false);
    return {out, mean, rstd, out_x};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        handle<NormBackwardSchema>("electra_fast::dropout_add_layer_norm_backward");
    // x, residual, weight, bias, x_bias, then four without a gradient
    variable_list result(9);
    // The gradients of out and out_x (grads[3]; undefined when it was not asked for or did not
    // reach the loss), summed by the kernel.
    if (!grads[0].defined() && !grads[3].defined()) return result;
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor grad_out = grads[0].defined() ? grads[0] : at::zeros_like(saved[1]);
    auto [dx, dresidual, dparameters] = op.call(
        grad_out.contiguous(), or_none(grads[3]), saved[0], saved[1], saved[2], or_none(saved[3]),
        saved[4], saved[5], or_none(saved[6]), ctx->saved_data["dropout_p"].toDouble());
    result[0] = dx;
    result[1] = dresidual;
    // Rows of one tensor: each parameter's gradient is a contiguous view, which autograd
    // accumulates (or keeps) like any other tensor of the parameter's layout.
    for (int64_t k = 0; k < dparameters.size(0); ++k) result[2 + k] = dparameters[k];
    return result;
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dropout_add_layer_norm_autograd(
    const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
    const at::Tensor& bias, const std::optional<at::Tensor>& x_bias,
    const std::optional<at::Tensor>& seed, double dropout_p, double eps, bool with_out_x) {
  variable_list out = DropoutAddLayerNorm::apply(x, residual, weight, bias, x_bias, seed, dropout_p,
                                                 eps, with_out_x);
  return {out[0], out[1], out[2], out[3]};
}

using BiasGeluSchema = at::Tensor(const at::Tensor&, const at::Tensor&, bool);
using BiasGeluBackwardSchema = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&,
                                                                  const at::Tensor&,
                                                                  const at::Tensor&, bool);

class BiasGelu : public torch::autograd::Function<BiasGelu> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& bias,
                               bool approximate) {
    static const auto op = handle<BiasGeluSchema>("electra_fast::bias_gelu");
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor y = op.call(x, bias, approximate);
    ctx->save_for_backward({x, bias});
    ctx->saved_data["approximate"] = approximate;
    ctx->set_materialize_grads(false);
    return {y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = handle<BiasGeluBackwardSchema>("electra_fast::bias_gelu_backward");
    variable_list result(3);  // x, bias, then approximate
    if (!grads[0].defined()) return result;
    const variable_list saved = ctx->get_saved_variables();
    auto [dx, dbias] =
        op.call(grads[0].contiguous(), saved[0], saved[1], ctx->saved_data["approximate"].toBool());
    result[0] = dx;
    result[1] = dbias;
    return result;
  }
};

at::Tensor bias_gelu_autograd(const at::Tensor& x, const at::Tensor& bias, bool approximate) {
  return BiasGelu::apply(x, bias, approximate)[0];
}

// column_sums runs in the backward formulas of linear layers, where nothing records it; its
// formula here keeps it differentiable elsewhere: the incoming gradient, repeated over x's rows.
class ColumnSums : public torch::autograd::Function<ColumnSums> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x) {
    static const auto op = handle<at::Tensor(const at::Tensor&)>("electra_fast::column_sums");
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["shape"] = x.sizes();
    ctx->saved_data["dtype"] = x.scalar_type();
    ctx->set_materialize_grads(false);
    return {op.call(x)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return {at::Tensor()};
    const auto dtype = ctx->saved_data["dtype"].toScalarType();
    return {grads[0].to(dtype).expand(ctx->saved_data["shape"].toIntVector())};
  }
};

at::Tensor column_sums_autograd(const at::Tensor& x) { return ColumnSums::apply(x)[0]; }

std::tuple<at::Tensor, at::Tensor> attention_forward_autograd(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& lengths, const std::optional<at::Tensor>& cu_seqlens,
    int64_t max_seqlen, const std::optional<at::Tensor>& seed, double dropout_p, double scale) {
  variable_list out =
      Attention::apply(q, k, v, lengths, cu_seqlens, max_seqlen, seed, dropout_p, scale);
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor> attention_qkv_forward_autograd(
    const at::Tensor& qkv, const std::optional<at::Tensor>& lengths,
    const std::optional<at::Tensor>& cu_seqlens, int64_t max_seqlen,
    const std::optional<at::Tensor>& seed, double dropout_p, double scale) {
  variable_list out =
      AttentionQkv::apply(qkv, lengths, cu_seqlens, max_seqlen, seed, dropout_p, scale);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(electra_fast, Autograd, m) {
  m.impl("attention_forward", &attention_forward_autograd);
  m.impl("attention_qkv_forward", &attention_qkv_forward_autograd);
  m.impl("dropout_add_layer_norm", &dropout_add_layer_norm_autograd);
  m.impl("bias_gelu", &bias_gelu_autograd);
  m.impl("column_sums", &column_sums_autograd);
}

}  // namespace electra_fast
