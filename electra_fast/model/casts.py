"""Autocast's weight casts made for a whole model at once, and float32 weight gradients made by
the matmuls themselves.

Under CUDA autocast every F.linear casts its float32 weight (and bias) to bfloat16 in a kernel
of its own, and its backward casts the bfloat16 weight gradient back to float32 in another. In
the H100 profile of an ELECTRA-small step (benchmarks/results/2026-11-24_h100.md) such casts
were about 600 of the step's kernels and 2.1 ms of its 18.4 ms. Here:

- `casting_weights` wraps a model's forward: under autocast, one multi-tensor copy
  (torch._foreach_copy_) casts the weights and biases of all the model's linear layers into
  one new buffer, and the forward's `linear` calls multiply by those casts. The buffer is made
  anew by each forward, as autocast's casts are: never stale, never changed in place under a
  backward that saved it.
- `linear(x, module)` is F.linear(x, module.weight, module.bias) in such a forward. Its backward
  returns the float32 weight's gradient from a matmul that writes float32 (mm_float32): the sum
  is not rounded to bfloat16 before it is widened, as autocast's is, so it is closer to the
  float32 gradient; the bias's from column_sums, which accumulates and writes float32; and a
  float32 input's (under CUDA autocast a LayerNorm's output is float32) from such a matmul too.

Outside such a forward, without autocast, or under torch.compile (whose inductor fuses casts
into their neighbours), `linear` is F.linear and nothing is cast ahead.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

from electra_fast.ops._common import mm_float32
from electra_fast.ops.column_sums import column_sums

# id(parameter) -> its cast, in the forward under way (None outside one).
_ACTIVE: ContextVar[dict[int, torch.Tensor] | None] = ContextVar("weight_casts", default=None)
# Each cast starts on a multiple of 64 elements (128 bytes in bfloat16): cuBLAS's fast paths
# want aligned operands, and a [1] bias would misalign every cast after it.
_ALIGN = 64


def casting_weights(forward: Callable) -> Callable:
    """Decorates a module's forward: it runs with the casts of the module's linear layers (see
    the module's doc) when autocast is on for the module's device, no forward around it made
    them already, and torch.compile is not tracing it."""

    @functools.wraps(forward)
    def wrapper(module: nn.Module, *args, **kwargs):
        if torch.compiler.is_compiling() or _ACTIVE.get() is not None:
            return forward(module, *args, **kwargs)
        return _run_with(make_casts(module), forward, module, *args, **kwargs)

    return wrapper


def with_current_casts(fn: Callable) -> Callable:
    """`fn` to run with the casts of the forward under way, then or later: what a checkpointed
    layer needs, whose forward runs again in the backward, after the forward has returned (and
    must save tensors like the first run's)."""
    if torch.compiler.is_compiling():  # no casts made ahead (and dynamo cannot trace the get)
        return fn
    casts = _ACTIVE.get()
    return fn if casts is None else functools.partial(_run_with, casts, fn)


def _run_with(casts: dict[int, torch.Tensor] | None, fn: Callable, *args, **kwargs):
    """fn(*args, **kwargs) with `casts` as the forward's casts (None: as it is)."""
    if casts is None:
        return fn(*args, **kwargs)
    token = _ACTIVE.set(casts)
    try:
        return fn(*args, **kwargs)
    finally:
        _ACTIVE.reset(token)


def make_casts(module: nn.Module) -> dict[int, torch.Tensor] | None:
    """id(parameter) -> its cast to autocast's dtype, for the float32 weights and biases of the
    linear layers in `module`, all made by one multi-tensor copy into one buffer; None when
    autocast is off for their device or they are not all float32 on one device."""
    first = next(module.parameters(), None)
    if first is None or not torch.is_autocast_enabled(first.device.type):
        return None
    device = first.device
    params = [
        p
        for m in module.modules()
        if isinstance(m, nn.Linear)
        for p in (m.weight, m.bias)
        if p is not None
    ]
    if not params or any(p.dtype != torch.float32 or p.device != device for p in params):
        return None
    sizes = [-(-p.numel() // _ALIGN) * _ALIGN for p in params]
    buffer = torch.empty(sum(sizes), dtype=torch.get_autocast_dtype(device.type), device=device)
    casts = [
        chunk[: p.numel()].view(p.shape)
        for chunk, p in zip(buffer.split(sizes), params, strict=True)
    ]
    with torch.no_grad():
        torch._foreach_copy_(casts, params)
    return {id(p): cast for p, cast in zip(params, casts, strict=True)}


def linear(x: torch.Tensor, module: nn.Linear, *, bias: bool = True) -> torch.Tensor:
    """F.linear(x, module.weight, module.bias if bias else None), on the forward's casts when
    there are some (see the module's doc)."""
    b = module.bias if bias else None
    casts = None if torch.compiler.is_compiling() else _ACTIVE.get()
    weight_cast = None if casts is None else casts.get(id(module.weight))
    if weight_cast is None:
        return F.linear(x, module.weight, b)
    bias_cast = None if b is None else casts[id(b)]
    return _LinearOnCasts.apply(x, module.weight, b, weight_cast, bias_cast)


class _LinearOnCasts(torch.autograd.Function):
    """F.linear(x, weight, bias) computed with the casts of weight and bias; gradients for x,
    weight and bias in their own dtypes."""

    @staticmethod
    def forward(ctx, x, weight, bias, weight_cast, bias_cast):
        x_cast = x.to(weight_cast.dtype)  # as autocast casts F.linear's input
        ctx.save_for_backward(x_cast, weight_cast)
        ctx.x_dtype = x.dtype
        return F.linear(x_cast, weight_cast, bias_cast)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_x = grad_weight = grad_bias = None
        rows = grad.reshape(-1, grad.shape[-1])
        if need_x and ctx.x_dtype == torch.float32:
            # A float32 input (a LayerNorm's output under CUDA autocast) gets its gradient from
            # a matmul that writes float32, not a bf16 product and a cast kernel after it.
            grad_x = mm_float32(rows, weight).view(*grad.shape[:-1], weight.shape[1])
        elif need_x:
            grad_x = (grad @ weight).to(ctx.x_dtype)
        if need_weight:
            grad_weight = mm_float32(rows.t(), x.reshape(-1, x.shape[-1]))
        if need_bias:
            grad_bias = column_sums(rows)
        return grad_x, grad_weight, grad_bias, None, None
