"""The generator step fused with its output layer: loss and samples from hidden states and the
tied embedding matrix without ever holding the [M, V] logits (stage 2 of the generator step).

The vocabulary is cut into tiles of columns. Forward: each tile's logits [M, tile] are computed
by one matmul, reduced by generator_step_tile to a logsumexp, the label's logit and a best Gumbel
score per row, and dropped; the tiles' results merge with an online logsumexp and a running
argmax. Backward: each tile's logits are computed again, turned into their gradient in place,
and give d weight and d bias for the tile's columns (each written once) and a term of d hidden
(accumulated in fp32). Peak extra memory is one tile, not [M, V], the way Liger-Kernel's fused
linear cross-entropy and Apple's Cut Cross-Entropy avoid the logits tensor.

Under autocast the matmuls of both passes run in autocast's dtype, as F.linear's would: hidden,
weight and bias are cast once and the casts kept for backward. (Backward runs outside autocast,
so it cannot rely on it: it used to recompute the logits in fp32, which on a GPU without TF32
took three fp32 matmuls per tile and made its gradient disagree with the bf16 logits that
forward had sampled from.)

Samples equal generator_step's on `hidden @ weight.T + bias` for the same seed: the tiles use
the same Philox words, and ties between tiles go to the earlier (smaller) column.
"""

from __future__ import annotations

import math

import torch

from electra_fast.ops._common import mm_float32, philox_key
from electra_fast.ops.column_sums import column_sums
from electra_fast.ops.sampling import (
    LOGIT_DTYPES,
    GeneratorStep,
    check_labels,
    check_step_arguments,
    step_ops,
)

DEFAULT_VOCAB_TILE = 4096


def generator_step_linear(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    disallow_labels: bool = False,
    ignore_index: int = -100,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    vocab_tile: int = DEFAULT_VOCAB_TILE,
    row_offset: int = 0,
    check_values: bool = True,
) -> GeneratorStep:
    """generator_step(hidden @ weight.T + bias, labels, ...) without the [M, V] logits.

    Args:
        hidden: [M, E], the generator head's output at the masked positions.
        weight: [V, E], the (tied) word embeddings; bias: [V] or None. Same device as hidden,
            and same dtype (float32, bfloat16 or float16) unless autocast is on for hidden's
            device: then, as F.linear, all three are multiplied in autocast's dtype and each
            gradient comes back in its own input's dtype.
        labels, temperature, disallow_labels, ignore_index, generator, seed, row_offset,
            check_values: as generator_step.
        vocab_tile: columns per tile; memory grows with it, matmul efficiency too. Rounded up to
            a multiple of 8 so that every tile's rows stay 16-byte aligned.

    Returns:
        GeneratorStep(loss [M] float32, differentiable in hidden, weight and bias; samples [M]).
    """
    _check_linear_inputs(hidden, weight, bias)
    V = weight.shape[0]
    check_step_arguments(labels, hidden.shape[0], V, hidden.device, temperature, disallow_labels)
    if vocab_tile < 1:
        raise ValueError(f"vocab_tile must be positive, got {vocab_tile}")
    if row_offset < 0:
        raise ValueError(f"row_offset must be non-negative, got {row_offset}")
    if check_values:
        check_labels(labels, V, ignore_index)
    key = philox_key(hidden.device, generator, seed, like="hidden")
    loss, samples = _GeneratorStepLinear.apply(
        hidden.contiguous(),
        weight.contiguous(),
        None if bias is None else bias.contiguous(),
        labels.contiguous(),
        key,
        float(temperature),
        bool(disallow_labels),
        int(ignore_index),
        8 * math.ceil(vocab_tile / 8),
        int(row_offset),
    )
    return GeneratorStep(loss, samples)


def _check_linear_inputs(hidden, weight, bias) -> None:
    for name, t in (("hidden", hidden), ("weight", weight)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"{name} must be a 2-D tensor, got {getattr(t, 'shape', t)!r}")
    if hidden.dtype not in LOGIT_DTYPES:
        raise TypeError(f"hidden must be float32, bfloat16 or float16, got {hidden.dtype}")
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"weight must have shape [V, E={hidden.shape[1]}], got {tuple(weight.shape)}"
        )
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must have shape [V={weight.shape[0]}], got {tuple(bias.shape)}")
    # Under autocast F.linear takes fp32 parameters with a bf16 hidden (CPU autocast leaves
    # the generator head's LayerNorm output in bf16), and so do we.
    mixed = torch.is_autocast_enabled(hidden.device.type)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if mixed and t.dtype not in LOGIT_DTYPES:
            raise TypeError(f"{name} must be float32, bfloat16 or float16, got {t.dtype}")
        if not mixed and t.dtype != hidden.dtype:
            raise TypeError(f"{name} must have hidden's dtype {hidden.dtype}, got {t.dtype}")
        if t.device != hidden.device:
            raise ValueError(f"{name} must be on hidden's device {hidden.device}, got {t.device}")


def vocab_tiles(V: int, tile: int) -> list[tuple[int, int]]:
    """[start, end) of each tile of `tile` columns of a vocabulary of V."""
    return [(start, min(V, start + tile)) for start in range(0, V, tile)]


def matmul_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The dtype F.linear would multiply a floating-point `hidden` in: autocast's for hidden's
    device when autocast is on there, else hidden's own."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return hidden.dtype


def tile_logits(hidden, weight, bias, start, end):
    """hidden @ weight[start:end].T + bias[start:end]: one tile of the logits."""
    if bias is None:
        return hidden @ weight[start:end].t()
    return torch.addmm(bias[start:end], hidden, weight[start:end].t())


class _GeneratorStepLinear(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, hidden, weight, bias, labels, key, temperature, disallow, ignore_index, tile, offset
    ):
        V = weight.shape[0]
        ops = step_ops(hidden)
        # Each gradient comes back in its input's dtype (they differ only under autocast).
        ctx.dtypes = tuple(None if t is None else t.dtype for t in (hidden, weight, bias))
        dtype = matmul_dtype(hidden)
        hidden, weight, bias = (None if t is None else t.to(dtype) for t in (hidden, weight, bias))
        with torch.autocast(hidden.device.type, enabled=False):
            tiles = [
                ops.generator_step_tile(
                    tile_logits(hidden, weight, bias, start, end),
                    labels, key, temperature, disallow, ignore_index, start, V, offset,
                )
                for start, end in vocab_tiles(V, tile)
            ]  # fmt: skip
        lse, label_logit, best, samples = (torch.stack(t) for t in zip(*tiles, strict=True))
        # The tiles merged with a few ops over all of them, not a few per tile: on a GPU each is
        # a launch. A tile's best score is never NaN, so argmax's first maximum is the earliest
        # tile's on a tie, whose smaller column wins as in one pass over the row.
        chosen = best.argmax(0, keepdim=True)
        samples = samples.gather(0, chosen)[0]
        lse = torch.logsumexp(lse, 0)
        label_logit = label_logit.amax(0)  # -inf outside the label's tile
        loss = torch.where(labels != ignore_index, lse - label_logit, 0.0)
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.ignore_index, ctx.tile = ignore_index, tile
        ctx.mark_non_differentiable(samples)
        return loss, samples

    @staticmethod
    def backward(ctx, grad_loss, grad_samples):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        ops = step_ops(hidden)
        grad_loss = grad_loss.to(lse.dtype).contiguous()
        grad_hidden = torch.zeros(hidden.shape, dtype=lse.dtype, device=hidden.device)
        hidden_dtype, weight_dtype, bias_dtype = ctx.dtypes
        # A float32 weight multiplied in bf16 (autocast) gets its gradient from matmuls that
        # write float32 (mm_float32): no bf16 rounding, and no cast of [V, E] after them.
        widen = weight_dtype == torch.float32 and weight.dtype != torch.float32
        grad_weight = None
        if need_weight:
            grad_weight = torch.empty_like(weight, dtype=weight_dtype if widen else None)
        grad_bias = torch.empty_like(bias, dtype=bias_dtype) if need_bias else None
        mm = mm_float32 if widen else torch.mm
        with torch.autocast(hidden.device.type, enabled=False):
            for start, end in vocab_tiles(weight.shape[0], ctx.tile):
                grad = tile_logits(hidden, weight, bias, start, end)
                ops.generator_step_backward_(grad_loss, grad, labels, lse, ctx.ignore_index, start)
                if need_hidden:
                    grad_hidden += grad @ weight[start:end]
                if need_weight:
                    mm(grad.t(), hidden, out=grad_weight[start:end])
                if need_bias:
                    grad_bias[start:end] = column_sums(grad)
        grad_hidden = grad_hidden.to(hidden_dtype) if need_hidden else None
        grad_weight = grad_weight.to(weight_dtype) if need_weight else None
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None, None, None
