"""Weight casts made once per forward (electra_fast.model.casts): the same outputs as autocast's
own casts, float32 weight gradients never rounded to bfloat16, one multi-tensor copy per
forward, and nothing different outside autocast or with gradient checkpointing."""

import collections

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from electra_fast import ElectraForPretraining
from electra_fast.model import casts
from electra_fast.model.modeling import set_gradient_checkpointing
from electra_fast.ops._common import mm_float32
from tests.model.test_pretraining import batch, loss_and_gradients, tiny


class Calls(TorchDispatchMode):
    """Counts aten calls, and the casts of float32 tensors to bfloat16 by shape."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()
        self.casts_to_bf16 = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.calls[func._opname] += 1
        if func._opname == "_to_copy" and kwargs.get("dtype") == torch.bfloat16:
            self.casts_to_bf16.append(tuple(args[0].shape))
        return func(*args, **kwargs)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(24, 40)
        self.b = nn.Linear(40, 8, bias=False)
        self.c = nn.Linear(8, 1)  # a [1] bias between the others' casts

    @casts.casting_weights
    def forward(self, x, use_bias=True):
        h = casts.linear(x, self.a, bias=use_bias)
        return casts.linear(casts.linear(h, self.b), self.c), h


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    net = Net()
    for p in net.parameters():
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=g))
    return net, torch.randn(6, 5, 24, generator=g)


def grads(net, x, out, grad_out):
    x.grad = None
    net.zero_grad(set_to_none=True)
    out.backward(grad_out)
    return {"x": x.grad, **{n: p.grad for n, p in net.named_parameters()}}


def test_outputs_equal_autocasts_and_weight_grads_are_not_rounded():
    """Forward: the same casts and matmuls as F.linear under autocast, so the same bits. Weight
    and bias gradients: the float64 product of the same bf16 operands to float32 rounding
    (autocast's are rounded to bfloat16: 100x further off)."""
    net, x = inputs()
    x.requires_grad_()
    with torch.autocast("cpu", torch.bfloat16):
        got, hidden = net(x)
        want = F.linear(F.linear(F.linear(x, net.a.weight, net.a.bias), net.b.weight),
                        net.c.weight, net.c.bias)  # fmt: skip
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, want)
    grad_out = torch.randn(got.shape, generator=torch.Generator().manual_seed(1)).bfloat16()
    ours, autocasts = grads(net, x, got, grad_out), grads(net, x, want, grad_out)
    for name, grad in ours.items():
        assert grad.dtype == torch.float32, name
    # The last layer's gradients, from its bf16 input and the bf16 incoming gradient.
    with torch.autocast("cpu", torch.bfloat16):
        c_input = net.b(hidden).detach().double()  # the same bits as in the forward
    rows = grad_out.double().reshape(-1, 1)
    want_weight = rows.t() @ c_input.reshape(-1, 8)
    torch.testing.assert_close(ours["c.weight"].double(), want_weight, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours["c.bias"].double(), rows.sum(0), rtol=1e-6, atol=1e-6)
    autocast_error = (autocasts["c.weight"].double() - want_weight).abs().max()
    assert autocast_error > 100 * (ours["c.weight"].double() - want_weight).abs().max()
    for name in ("x", "a.weight", "a.bias", "b.weight"):  # the rest: bf16 error apart
        torch.testing.assert_close(ours[name], autocasts[name], rtol=2e-2, atol=2e-2, msg=name)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_one_layers_gradients_are_float32_products_of_its_bf16_operands(x_dtype):
    """x's, the weight's and the bias's gradients against float64 products of the bf16 operands
    the forward multiplied: to float32 rounding, for a float32 x (a LayerNorm's output under CUDA
    autocast) and a float32 weight; a bf16 x gets a bf16 gradient, as under autocast."""
    net, x = inputs()
    x = x.to(x_dtype).requires_grad_()
    with torch.autocast("cpu", torch.bfloat16):
        out = casts.casting_weights(lambda net, x: casts.linear(x, net.a))(net, x)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).bfloat16()
    got = grads(net, x, out, grad_out)
    rows, x_rows = grad_out.double().flatten(0, 1), x.detach().bfloat16().double().flatten(0, 1)
    w = net.a.weight.detach().bfloat16().double()
    want = {"x": (rows @ w).view(x.shape), "a.weight": rows.t() @ x_rows, "a.bias": rows.sum(0)}
    assert got["x"].dtype == x_dtype
    for name, value in want.items():
        tolerance = 1e-6 if got[name].dtype == torch.float32 else 1e-2
        torch.testing.assert_close(got[name].double(), value, rtol=tolerance, atol=tolerance)


def test_one_copy_per_forward_and_no_weight_casts():
    net, x = inputs()
    with Calls() as calls, torch.autocast("cpu", torch.bfloat16):
        net(x)
    assert calls.calls["_foreach_copy_"] == 1
    assert calls.casts_to_bf16 == [tuple(x.shape)]  # the input alone


def test_the_casts_are_aligned_and_equal_the_parameters_rounded():
    net, _ = inputs()
    with torch.autocast("cpu", torch.bfloat16):
        made = casts.make_casts(net)
    params = list(net.parameters())
    assert sorted(made) == sorted(id(p) for p in params)
    for p in params:
        cast = made[id(p)]
        assert cast.data_ptr() % 128 == made[id(net.a.weight)].data_ptr() % 128
        assert torch.equal(cast, p.detach().bfloat16())


@pytest.mark.parametrize("case", ["no autocast", "float64 parameters"])
def test_plain_linear_where_nothing_is_cast(case):
    net, x = inputs()
    if case == "float64 parameters":
        net, x = net.double(), x.double()
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=case != "no autocast")
    with Calls() as calls, autocast:
        got, _ = net(x)
        assert casts.make_casts(net) is None
    assert calls.calls["_foreach_copy_"] == 0
    with autocast:
        want = net.c(net.b(net.a(x)))
    assert torch.equal(got, want)


def test_a_pretraining_forward_casts_once_and_checkpointing_changes_nothing():
    """One copy for the whole model (the encoders inside make none of their own); with gradient
    checkpointing, whose second forward runs after the first returned, the same gradients."""
    torch.manual_seed(0)
    model = ElectraForPretraining(tiny(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    ids, mask = batch()

    def run():
        calls = Calls()

        def forward():
            with calls, torch.autocast("cpu", torch.bfloat16):
                return model(ids, mask, keys=torch.tensor([3, 4]), metrics=False)

        return calls, loss_and_gradients(model, forward)[1]

    calls, want = run()
    assert calls.calls["_foreach_copy_"] == 1
    set_gradient_checkpointing(model)
    calls, got = run()
    assert calls.calls["_foreach_copy_"] == 1
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, rtol=0, atol=0, msg=name)


def test_compiled_forward_under_autocast_equals_eager():
    """torch.compile traces the decorated forward (no casts made ahead: inductor fuses them)."""
    net, x = inputs()
    with torch.autocast("cpu", torch.bfloat16):
        want, _ = net(x)
        got, _ = torch.compile(net, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mm_float32_is_the_float64_product_rounded_once(dtype):
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(shape, generator=g).to(dtype) for shape in ((33, 70), (70, 17)))
    got = mm_float32(a, b)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), a.double() @ b.double(), rtol=1e-5, atol=1e-5)
    out = torch.empty(33, 17)
    assert mm_float32(a, b, out=out) is out and torch.equal(out, got)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_mm_float32_writes_float32(dtype):
    """On CUDA the matmul writes float32 itself: the result matches the float64 product to
    float32 accuracy (not to the inputs' dtype's)."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(shape, generator=g).to(dtype) for shape in ((256, 1024), (1024, 96)))
    want = a.double() @ b.double()
    a, b = a.cuda(), b.cuda()
    with Calls() as calls:
        got = mm_float32(a, b)
    assert calls.calls["_to_copy"] == 0, calls.calls  # one matmul, no cast
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double().cpu(), want, rtol=1e-5, atol=1e-4)
