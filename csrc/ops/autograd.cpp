// Autograd for attention_forward, in C++: one node per call whose backward calls
// attention_backward. A formula registered from Python (torch.library.register_autograd) runs
// Python at every forward call (the schema's defaults filled in, setup_context) and every
// backward, and allocates a zero gradient for the log-sum-exp before each backward. An encoder
// calls attention once per layer and step, and on a GPU the host is what limits a small model's
// eager step (benchmarks/bench_step_host.py). A build without this file counts as out of date
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

std::tuple<at::Tensor, at::Tensor> attention_forward_autograd(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& lengths, const std::optional<at::Tensor>& cu_seqlens,
    int64_t max_seqlen, const std::optional<at::Tensor>& seed, double dropout_p, double scale) {
  variable_list out =
      Attention::apply(q, k, v, lengths, cu_seqlens, max_seqlen, seed, dropout_p, scale);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(electra_fast, Autograd, m) {
  m.impl("attention_forward", &attention_forward_autograd);
}

}  // namespace electra_fast
