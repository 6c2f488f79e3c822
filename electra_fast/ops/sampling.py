"""The generator's step in ELECTRA pretraining, fused: MLM cross-entropy, a Gumbel-max sample per
row (`pretrain_helpers.sample_from_softmax`) and, from the samples, the discriminator's inputs.

`generator_step` runs the compiled kernels (csrc/ops/sampling.cpp, csrc/ops/cuda/sampling.cu) or,
without them, the torch references below; all draw the same samples for the same key. Its
gradient is softmax - onehot(label), computed in backward from the logits and a saved fp32
logsumexp, never from a stored probability tensor.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from electra_fast import _extension
from electra_fast.ops._common import may_synchronise, philox_key, reference_op
from electra_fast.ops._philox import STREAM_SAMPLING, philox_elements

OP = "generator_step"
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# float64 runs the reference, in float64 throughout: for gradcheck, not for training.
LOGIT_DTYPES = KERNEL_DTYPES + (torch.float64,)
# Rows the references handle at once: bounds their [rows, V] temporaries (Philox words in int64).
_REFERENCE_ELEMENTS = 1 << 21


class GeneratorStep(NamedTuple):
    loss: torch.Tensor  # [M] float32: cross-entropy per row, 0 for ignored rows
    samples: torch.Tensor  # [M] int64: a Gumbel-max sample per row, in [0, V)


class DiscriminatorInputs(NamedTuple):
    input_ids: torch.Tensor  # [B, L]: the original ids with the samples at the used positions
    labels: torch.Tensor  # [B, L] float32: 1 where a token was replaced by a different one


def generator_step(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    disallow_labels: bool = False,
    ignore_index: int = -100,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    inplace_backward: bool = False,
    row_offset: int = 0,
    check_values: bool = True,
) -> GeneratorStep:
    """The generator's MLM loss and one sample per row, in one pass over the logits.

    Args:
        logits: [M, V] float32, bfloat16 or float16: the generator's logits at the masked
            positions. All arithmetic is fp32 whatever their dtype. (float64 also works, on
            the slow reference path and in float64, for gradient checks.)
        labels: [M] int64: the original token of each row, in [0, V), or ignore_index.
        temperature: > 0; samples are argmax over v of logits_v / temperature + g_v, g_v Gumbel
            noise: a draw from softmax(logits / temperature).
        disallow_labels: never sample a row's label (ELECTRA's `disallow_correct`).
        ignore_index: marks unused rows: loss 0, zero gradient, a sample drawn all the same.
        generator: the device's torch generator to draw the Philox key from (default: the
            device's default generator).
        seed: an explicit Philox key instead of a draw: the same samples on every device. An
            int or a 0-d int64 tensor on logits' device, as for mask_tokens.
        inplace_backward: let the backward write the gradient over `logits` (saves an [M, V]
            tensor); only when nothing else needs the logits afterwards. Ignored under
            torch.compile.
        row_offset: the index of the first row in the random stream (as for mask_tokens: ranks
            passing rank * M draw what one process would draw for the whole batch).
        check_values: check the labels' range, which on a GPU reads them back (the host waits
            for the device); False for labels the caller checked already. Unchecked, a row
            whose label is out of range gets a non-finite loss, never a read out of bounds; the
            CPU kernel rejects such labels as it reads them, whatever check_values says.

    Returns:
        GeneratorStep(loss [M] float32, differentiable with respect to logits; samples [M] int64).
        Rows with non-finite logits get a non-finite loss and some sample in [0, V).
    """
    _check_step_inputs(logits, labels, temperature, disallow_labels, ignore_index)
    if row_offset < 0:
        raise ValueError(f"row_offset must be non-negative, got {row_offset}")
    key = philox_key(logits.device, generator, seed, like="logits")
    logits = logits.contiguous()
    ops = step_ops(logits)
    if check_values and not (ops is torch.ops.electra_fast and logits.device.type == "cpu"):
        check_labels(labels, logits.shape[1], ignore_index)  # the CPU kernel checks as it reads
    loss, samples, _ = ops.generator_step.default(
        logits,
        labels,
        key,
        float(temperature),
        bool(disallow_labels),
        int(ignore_index),
        bool(inplace_backward),
        int(row_offset),
    )
    return GeneratorStep(loss, samples)


def build_discriminator_inputs(
    input_ids: torch.Tensor, positions: torch.Tensor, weights: torch.Tensor, samples: torch.Tensor
) -> DiscriminatorInputs:
    """The discriminator's input: `input_ids` with `samples` written at the used `positions`.

    Args:
        input_ids: [B, L] the original (unmasked) ids.
        positions, weights: [B, N] as mask_tokens returns them; a slot is used where weight != 0.
        samples: [B * N] or [B, N], the generator's samples for the slots, row-major.

    Returns:
        DiscriminatorInputs(input_ids [B, L], labels [B, L] float32), labels 1 where the token was
        replaced by a different one: a sample equal to the original counts as real, as in
        ELECTRA's `_get_fake_data`.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape [B, L], got {tuple(input_ids.shape)}")
    B, L = input_ids.shape
    if positions.dim() != 2 or positions.shape[0] != B:
        raise ValueError(f"positions must have shape [B={B}, N], got {tuple(positions.shape)}")
    N = positions.shape[1]
    if weights.shape != positions.shape:
        raise ValueError(
            f"weights must have positions' shape {tuple(positions.shape)}, "
            f"got {tuple(weights.shape)}"
        )
    if samples.numel() != B * N:
        raise ValueError(f"samples must have B * N = {B * N} elements, got {samples.numel()}")
    for name, t in (("positions", positions), ("weights", weights), ("samples", samples)):
        if t.device != input_ids.device:
            raise ValueError(
                f"{name} must be on input_ids' device {input_ids.device}, got {t.device}"
            )
    used = weights != 0
    # Unused slots write to an extra column that is cut off, so that they never race a used
    # slot for the same position (unused slots point at position 0).
    target = torch.where(used, positions, L)
    padded = torch.nn.functional.pad(input_ids, (0, 1))
    new_ids = padded.scatter(1, target, samples.reshape(B, N).to(input_ids.dtype))[:, :L]
    return DiscriminatorInputs(new_ids, (new_ids != input_ids).float())


def _check_step_inputs(logits, labels, temperature, disallow_labels, ignore_index) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a tensor, got {type(logits).__name__}")
    if logits.dtype not in LOGIT_DTYPES:
        raise TypeError(
            f"logits must be float32, bfloat16, float16 (or float64), got {logits.dtype}"
        )
    if logits.dim() != 2 or logits.shape[1] == 0:
        raise ValueError(f"logits must have shape [M, V] with V >= 1, got {tuple(logits.shape)}")
    check_step_arguments(labels, *logits.shape, logits.device, temperature, disallow_labels)


def check_step_arguments(labels, M, V, device, temperature, disallow_labels) -> None:
    """The checks of generator_step's arguments besides the logits, for M rows of V columns."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a tensor, got {type(labels).__name__}")
    if labels.dtype != torch.int64:
        raise TypeError(f"labels must be int64, got {labels.dtype}")
    if labels.shape != (M,):
        raise ValueError(f"labels must have shape [M={M}], got {tuple(labels.shape)}")
    if labels.device != device:
        raise ValueError(f"labels must be on the logits' device {device}, got {labels.device}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be positive and finite, got {temperature}")
    if disallow_labels and V < 2:
        raise ValueError("disallow_labels needs at least two columns to sample from")


def check_labels(labels: torch.Tensor, vocab_size: int, ignore_index: int) -> None:
    if not may_synchronise(labels):
        return
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab_size))
    if bool(bad.any()):
        value = int(labels[bad][0])
        raise ValueError(
            f"labels must be in [0, vocab_size={vocab_size}) or ignore_index={ignore_index}, "
            f"got {value}"
        )


# ---------------------------------------------------------------------------------------------
# References: argument for argument like the compiled ops; the fallback and the test oracle.


def gumbel_noise_reference(
    seed: torch.Tensor, rows: torch.Tensor, vocab_start: int, n: int, vocab_size: int
) -> torch.Tensor:
    """[R, n] float32: the Gumbel noise of `rows` (int64 [R]), columns [vocab_start, +n)."""
    first = vocab_start // 4
    groups = torch.arange(first, (vocab_start + n - 1) // 4 + 1, device=rows.device)
    index = rows[:, None] * ((vocab_size + 3) // 4) + groups
    words = torch.stack(philox_elements(seed, index, STREAM_SAMPLING), dim=-1).flatten(1)
    offset = vocab_start - 4 * first
    t = words[:, offset : offset + n].float() * 2.0**-32 + 2.0**-33
    t = t.clamp(max=float(np.nextafter(np.float32(1), np.float32(0))))
    u = 1 - t
    # -log1p(-t) as t * log(u) / (u - 1), as gumbel_exponential in csrc/ops/sampling.h does.
    exponential = torch.where(u == 1, t, t * torch.log(u) / (u - 1))
    return -torch.log(exponential)


def _label_in_tile(label, valid, vocab_start: int, n: int):
    """Whether each row's label lies in the tile [vocab_start, vocab_start + n), and its
    column there ([R, 1], 0 where it does not)."""
    in_tile = valid & (label >= vocab_start) & (label < vocab_start + n)
    return in_tile, torch.where(in_tile, label - vocab_start, 0)[:, None]


def _row_chunks(rows: int, columns: int):
    step = max(1, _REFERENCE_ELEMENTS // max(1, columns))
    return [slice(start, min(rows, start + step)) for start in range(0, rows, step)]


def generator_step_tile_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    seed: torch.Tensor,
    temperature: float,
    disallow_labels: bool,
    ignore_index: int,
    vocab_start: int,
    vocab_size: int,
    row_offset: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of a tile: (logsumexp, label logit or -inf, best Gumbel score, its column)."""
    M, n = logits.shape
    device = logits.device
    inverse_temperature = float(np.float32(1.0 / temperature))
    dtype = _accumulation_dtype(logits)
    lse = torch.empty(M, device=device, dtype=dtype)
    label_logit = torch.empty(M, device=device, dtype=dtype)
    best = torch.empty(M, device=device, dtype=dtype)
    samples = torch.empty(M, dtype=torch.int64, device=device)
    for rows in _row_chunks(M, n):
        x = logits[rows].to(dtype)
        label = labels[rows]
        in_tile, column = _label_in_tile(label, label != ignore_index, vocab_start, n)
        lse[rows] = torch.logsumexp(x, dim=1)
        label_logit[rows] = torch.where(in_tile, x.gather(1, column)[:, 0], -math.inf)
        row_index = torch.arange(M, device=device)[rows] + row_offset
        noise = gumbel_noise_reference(seed, row_index, vocab_start, n, vocab_size)
        score = x * inverse_temperature + noise
        score = torch.where(torch.isnan(score), -math.inf, score)  # NaN never wins
        if disallow_labels:
            columns = torch.arange(n, device=device)
            score = score.masked_fill(in_tile[:, None] & (columns == column), -math.inf)
        best_column = score.argmax(dim=1)  # the first of equal maxima, as the kernels
        best[rows] = score.gather(1, best_column[:, None])[:, 0]
        samples[rows] = best_column
    return lse, label_logit, best, samples + vocab_start


def generator_step_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    seed: torch.Tensor,
    temperature: float,
    disallow_labels: bool,
    ignore_index: int,
    inplace_backward: bool,
    row_offset: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """generator_step in plain torch: (loss, samples, lse)."""
    V = logits.shape[1]
    lse, label_logit, _, samples = generator_step_tile_reference(
        logits, labels, seed, temperature, disallow_labels, ignore_index, 0, V, row_offset
    )
    loss = torch.where(labels != ignore_index, lse - label_logit, 0.0)
    return loss, samples, lse


def generator_step_backward_reference(
    grad_loss: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    ignore_index: int,
    vocab_start: int,
) -> torch.Tensor:
    """(softmax(logits) - onehot(label)) * grad_loss per row, in logits' dtype."""
    M, n = logits.shape
    grad = torch.empty_like(logits)
    valid = labels != ignore_index
    for rows in _row_chunks(M, n):
        p = torch.exp(logits[rows].to(lse.dtype) - lse[rows, None])
        label = labels[rows]
        in_tile, column = _label_in_tile(label, valid[rows], vocab_start, n)
        p.scatter_add_(1, column, -in_tile[:, None].to(p.dtype))
        g = torch.where(valid[rows], grad_loss[rows], 0.0)[:, None]
        grad[rows] = torch.where(valid[rows, None], p * g, 0.0).to(logits.dtype)
    return grad


def generator_step_backward_inplace_reference(
    grad_loss: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    ignore_index: int,
    vocab_start: int,
) -> None:
    logits.copy_(
        generator_step_backward_reference(grad_loss, logits, labels, lse, ignore_index, vocab_start)
    )


# ---------------------------------------------------------------------------------------------
# Registration: fakes and autograd for the kernels, and the references as opaque ops of their
# own (so torch.compile treats the fallback like the kernel: one node in the graph).


def _accumulation_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _rows_like(logits, dtype=None):
    return logits.new_empty(logits.shape[:1], dtype=dtype or _accumulation_dtype(logits))


def _step_fake(logits, labels, seed, temperature, disallow_labels, ignore_index, inplace, offset):
    torch._check(logits.dim() == 2, lambda: "logits must have shape [M, V]")
    return _rows_like(logits), _rows_like(logits, torch.int64), _rows_like(logits)


def _tile_fake(logits, labels, seed, temperature, disallow_labels, ignore_index, start, V, offset):
    torch._check(logits.dim() == 2, lambda: "logits must have shape [M, n]")
    rows = _rows_like(logits)
    return rows, torch.empty_like(rows), torch.empty_like(rows), _rows_like(logits, torch.int64)


def _backward_fake(grad_loss, logits, labels, lse, ignore_index, vocab_start):
    return torch.empty_like(logits)


def _backward_inplace_fake(grad_loss, logits, labels, lse, ignore_index, vocab_start):
    return None


def _setup_context(ctx, inputs, output):
    logits, labels, _, _, _, ignore_index, inplace_backward, _ = inputs
    _, samples, lse = output
    ctx.mark_non_differentiable(samples, lse)
    ctx.save_for_backward(logits, labels, lse)
    ctx.ignore_index = ignore_index
    ctx.inplace_backward = inplace_backward


def _backward(ctx, grad_loss, grad_samples, grad_lse):
    logits, labels, lse = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return (None,) * 8
    ops = step_ops(logits)
    grad_loss = grad_loss.to(lse.dtype).contiguous()
    # AOTAutograd cannot trace a write into a forward input, so under compile the gradient gets
    # a tensor of its own.
    if ctx.inplace_backward and not torch.compiler.is_compiling():
        ops.generator_step_backward_(grad_loss, logits, labels, lse, ctx.ignore_index, 0)
        grad = logits
    else:
        grad = ops.generator_step_backward(grad_loss, logits, labels, lse, ctx.ignore_index, 0)
    return grad, None, None, None, None, None, None, None


def step_ops(logits: torch.Tensor):
    """The namespace (compiled or reference) whose generator_step ops take `logits`."""
    if _extension.use_kernel(OP, logits.device) and logits.dtype in KERNEL_DTYPES:
        return torch.ops.electra_fast
    return torch.ops.electra_fast_ref


_REFERENCES = {
    "generator_step": (
        generator_step_reference,
        _step_fake,
        "(Tensor logits, Tensor labels, Tensor seed, float temperature, bool disallow_labels, "
        "int ignore_index, bool inplace_backward, int row_offset) -> (Tensor, Tensor, Tensor)",
        (),
    ),
    "generator_step_tile": (
        generator_step_tile_reference,
        _tile_fake,
        "(Tensor logits, Tensor labels, Tensor seed, float temperature, bool disallow_labels, "
        "int ignore_index, int vocab_start, int vocab_size, int row_offset) "
        "-> (Tensor, Tensor, Tensor, Tensor)",
        (),
    ),
    "generator_step_backward": (
        generator_step_backward_reference,
        _backward_fake,
        "(Tensor grad_loss, Tensor logits, Tensor labels, Tensor lse, int ignore_index, "
        "int vocab_start) -> Tensor",
        (),
    ),
    "generator_step_backward_": (
        generator_step_backward_inplace_reference,
        _backward_inplace_fake,
        "(Tensor grad_loss, Tensor(a!) logits, Tensor labels, Tensor lse, int ignore_index, "
        "int vocab_start) -> ()",
        ("logits",),
    ),
}
for _name, (_function, _fake, _schema, _mutates) in _REFERENCES.items():
    _op = reference_op(_name, _function, _schema, _mutates)
    _op.register_fake(_fake)
    if _extension.EXTENSION_LOADED:
        torch.library.register_fake(f"{_extension.LIBRARY}::{_name}")(_fake)
for _library in (_extension.REFERENCE_LIBRARY,) + (
    (_extension.LIBRARY,) if _extension.EXTENSION_LOADED else ()
):
    torch.library.register_autograd(
        f"{_library}::generator_step", _backward, setup_context=_setup_context
    )
