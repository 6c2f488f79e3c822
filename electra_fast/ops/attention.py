"""Bidirectional encoder attention with padding or packed sequences and Philox dropout.

`attention` takes q, k, v as the projections produce them ([B, L, H, D], or [T, H, D] packed
with cu_seqlens), ignores the keys past each sequence's length and returns zeros for the
padded query rows. Where a compiled kernel takes the call (csrc/ops/attention.cpp on the CPU,
csrc/ops/cuda/attention.cu on sm80+ GPUs for bfloat16/float16 and head dims 32, 64 and 128),
it runs flash style: no [L, L] matrix is stored, and the backward recomputes the probabilities
and the dropout mask. Otherwise the torch path runs: SDPA without dropout; with dropout, the
plain-torch reference as an opaque op whose backward regenerates the mask from the Philox key.

Dropout: the keep decision of query i, key j of sequence b, head h is the 16-bit half j % 8 of
the Philox block with counter (j / 8, i, stream 3, b * H + h); it keeps when the half is at least
t = round(p * 2^16), and kept probabilities are scaled by 2^16 / (2^16 - t), so the expectation
is exact. It depends on the sequence and the positions within it, not on the layout, so padded
and packed calls drop the same probabilities (csrc/ops/attention.h).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from electra_fast import _extension
from electra_fast.ops._common import may_synchronise, philox_key, reference_op
from electra_fast.ops._philox import MASK32, STREAM_ATTENTION_DROPOUT, philox4x32_10

OP = "attention_forward"
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
CPU_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
CUDA_KERNEL_DTYPES = (torch.bfloat16, torch.float16)
CUDA_HEAD_DIMS = (32, 64, 128)
# The CPU twin of the CUDA kernels runs only with dropout by default: without it, it is about as
# fast as torch's SDPA (within 5-25% either way), which then keeps the call; with it the twin is
# 3x faster than the plain-torch reference and stores no [B, H, L, L] mask
# (benchmarks/bench_attention.py -k cpu_paths). Tests set this to exercise the twin.
CPU_KERNEL_WITHOUT_DROPOUT = False
MAX_HEAD_DIM = 256


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    lengths: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    check_values: bool = True,
) -> torch.Tensor:
    """softmax(q k^T * scale) v per sequence and head, with padding or packed sequences.

    Args:
        q, k, v: padded [B, L, H, D] or packed [T, H, D] (then `cu_seqlens` is required); one
            dtype (float32, bfloat16, float16; float64 for checks) and device. D a multiple of 8,
            at most 256.
        lengths: [B] int32/int64 for the padded layout: keys at or beyond a sequence's length are
            ignored and its query rows there come out as zeros; None: no padding.
        cu_seqlens: [B + 1] int32/int64 for the packed layout: sequence b is tokens
            cu_seqlens[b]:cu_seqlens[b + 1]; increasing from 0 to T.
        max_seqlen: the longest sequence of a packed batch (required with cu_seqlens).
        dropout_p: dropout on the attention probabilities, in [0, 1).
        softmax_scale: default 1 / sqrt(D).
        generator, seed: where the Philox key of the dropout comes from, as for mask_tokens.
        check_values: check the values of lengths / cu_seqlens (a device synchronisation);
            callers that checked them once, like the encoder's layers, pass False.

    Returns:
        out, q's shape and dtype. Differentiable in q, k and v.
    """
    packed = _check_inputs(q, k, v, lengths, cu_seqlens, max_seqlen, dropout_p, check_values)
    scale, key = _scale_and_key(q, softmax_scale, dropout_p, generator, seed)
    if use_kernel(q, dropout_p):
        layout = _kernel_layout(q, lengths, cu_seqlens, max_seqlen)
        out, _ = torch.ops.electra_fast.attention_forward(
            q, k, v, *layout, key, float(dropout_p), scale
        )
        return out
    if packed:
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
        index = _packed_index(cu_seqlens, q.shape[0], int(max_seqlen))
        q, k, v = (_pad(t, index, len(lengths), int(max_seqlen)) for t in (q, k, v))
    B, L = q.shape[:2]
    if lengths is None:
        lengths = torch.full((B,), L, dtype=torch.long, device=q.device)
    lengths = lengths.long()
    if dropout_p > 0:
        out = torch.ops.electra_fast_ref.attention_dropout(q, k, v, lengths, key, dropout_p, scale)
    else:
        out = attention_sdpa(q, k, v, lengths, scale)
    if packed:
        out = out.flatten(0, 1)[index]
    return out


def attention_qkvpacked(
    qkv: torch.Tensor,
    *,
    lengths: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    check_values: bool = True,
) -> torch.Tensor:
    """attention(*qkv.unbind(-3), ...) over q, k and v packed as a fused projection makes them:
    qkv [B, L, 3, H, D], or [T, 3, H, D] with cu_seqlens; the other arguments as attention's.

    The same output, and the same draw from the generator. The difference is the gradient: the
    kernels write qkv's as one tensor, where attention's three separate gradients cost autograd a
    copy of all three into one (a stack) on their way to the projection.
    """
    if not isinstance(qkv, torch.Tensor):
        raise TypeError(f"qkv must be a tensor, got {type(qkv).__name__}")
    packed = cu_seqlens is not None
    if qkv.dim() != (4 if packed else 5) or qkv.shape[-3] != 3:
        want = "[T, 3, H, D] with cu_seqlens" if packed else "[B, L, 3, H, D]"
        raise ValueError(f"qkv must have shape {want}, got {tuple(qkv.shape)}")
    q, k, v = qkv.unbind(-3)
    arguments = dict(lengths=lengths, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
    if not use_kernel(q, dropout_p):
        return attention(q, k, v, **arguments, dropout_p=dropout_p, softmax_scale=softmax_scale,
                         generator=generator, seed=seed, check_values=check_values)  # fmt: skip
    _check_inputs(q, k, v, *arguments.values(), dropout_p, check_values)
    scale, key = _scale_and_key(q, softmax_scale, dropout_p, generator, seed)
    layout = _kernel_layout(q, *arguments.values())
    out, _ = torch.ops.electra_fast.attention_qkv_forward(
        qkv, *layout, key, float(dropout_p), scale
    )
    return out


def _scale_and_key(q, softmax_scale, dropout_p, generator, seed):
    """The softmax scale, and the dropout's Philox key (None without dropout: no draw, so such
    a call leaves the generator where it was)."""
    scale = float(softmax_scale) if softmax_scale is not None else q.shape[-1] ** -0.5
    key = philox_key(q.device, generator, seed, like="q") if dropout_p > 0 else None
    return scale, key


def _kernel_layout(q, lengths, cu_seqlens, max_seqlen):
    """(lengths, cu_seqlens, max_seqlen) as the compiled ops take them: int32, and L as
    max_seqlen of the padded layout."""
    if lengths is not None:
        lengths = lengths.to(torch.int32)
    if cu_seqlens is not None:
        return lengths, cu_seqlens.to(torch.int32), int(max_seqlen)
    return lengths, None, q.shape[1]


def use_kernel(q: torch.Tensor, dropout_p: float) -> bool:
    """Whether a call with these q (k, v alike) runs the compiled kernel."""
    if not _extension.use_kernel(OP, q.device):
        return False
    if q.device.type == "cpu":
        return q.dtype in CPU_KERNEL_DTYPES and (dropout_p > 0 or CPU_KERNEL_WITHOUT_DROPOUT)
    return (
        q.dtype in CUDA_KERNEL_DTYPES
        and q.shape[-1] in CUDA_HEAD_DIMS
        # mma.sync on bfloat16 needs sm80. (torch.compile folds this call into a constant.)
        and torch.cuda.get_device_properties(q.device).major >= 8
    )


def attention_sdpa(q, k, v, lengths, scale):
    """The dropout-free path: torch's scaled_dot_product_attention with a key mask."""
    L = q.shape[1]
    positions = torch.arange(L, device=q.device)
    # An empty sequence still attends to key 0, so that no softmax row is all -inf (NaN in
    # some backends' gradients); its output rows are zeroed below like every padded row.
    keys = positions < lengths.clamp(min=1)[:, None]
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=keys[:, None, None, :],
        scale=scale,
    ).transpose(1, 2)
    return out.masked_fill(~(positions < lengths[:, None])[:, :, None, None], 0.0)


def dropout_keep_mask(
    seed: torch.Tensor, B: int, H: int, L: int, dropout_p: float, device: torch.device
) -> torch.Tensor:
    """[B, H, L, L] bool: which attention probabilities (query i, key j) survive dropout."""
    groups = (L + 7) // 8
    bh = torch.arange(B * H, device=device).view(B * H, 1, 1)
    i = torch.arange(L, device=device).view(1, L, 1)
    j8 = torch.arange(groups, device=device).view(1, 1, groups)
    zero = torch.zeros((), dtype=torch.long, device=device)
    words = philox4x32_10(
        (j8, i, zero + STREAM_ATTENTION_DROPOUT, bh), (seed & MASK32, (seed >> 32) & MASK32)
    )
    words = torch.stack(torch.broadcast_tensors(*words), dim=-1)  # [BH, L, groups, 4]
    halves = torch.stack((words & 0xFFFF, words >> 16), dim=-1)  # key j: half j % 8
    halves = halves.flatten(-3)[..., :L]
    return (halves >= dropout_threshold(dropout_p)).view(B, H, L, L)


def dropout_threshold(dropout_p: float) -> int:
    """t: a probability is kept when its 16-bit half is at least t, P(keep) = 1 - t / 2^16."""
    return min(2**16 - 1, round(dropout_p * 2**16))


def dropout_keep_scale(dropout_p: float) -> float:
    """What kept probabilities are multiplied by: 1 / P(keep), exactly."""
    return 2**16 / (2**16 - dropout_threshold(dropout_p))


def _probabilities(q, k, lengths, scale, compute):
    """softmax(q k^T * scale) over each sequence's keys: [B, H, L, L] in `compute`."""
    L = q.shape[1]
    scores = torch.einsum("bihd,bjhd->bhij", q.to(compute), k.to(compute)) * scale
    keys = torch.arange(L, device=q.device) < lengths.clamp(min=1)[:, None]
    return scores.masked_fill(~keys[:, None, None, :], -math.inf).softmax(-1)


def _real_queries(lengths, L):
    """[B, L, 1, 1] bool: the query rows inside their sequence."""
    return (torch.arange(L, device=lengths.device) < lengths[:, None])[:, :, None, None]


def _compute_dtype(q):
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def attention_reference(q, k, v, lengths, keep, keep_scale, scale):
    """Plain torch, in fp32 (fp64 for fp64 inputs): the oracle, given the keep mask (or None)
    and the factor kept probabilities are scaled by."""
    compute = _compute_dtype(q)
    probabilities = _probabilities(q, k, lengths, scale, compute)
    if keep is not None:
        probabilities = probabilities * keep * keep_scale
    out = torch.einsum("bhij,bjhd->bihd", probabilities, v.to(compute))
    return out.masked_fill(~_real_queries(lengths, q.shape[1]), 0.0).to(q.dtype)


def attention_reference_backward(grad, q, k, v, lengths, keep, keep_scale, scale):
    """(dq, dk, dv) of attention_reference, written out as the flash backward computes them:
    the probabilities recomputed, dS = P * (dP - rowsum(dP * P))."""
    compute = _compute_dtype(q)
    grad = grad.to(compute).masked_fill(~_real_queries(lengths, q.shape[1]), 0.0)
    probabilities = _probabilities(q, k, lengths, scale, compute)
    dropped = probabilities if keep is None else probabilities * keep * keep_scale
    dv = torch.einsum("bhij,bihd->bjhd", dropped, grad)
    d_dropped = torch.einsum("bihd,bjhd->bhij", grad, v.to(compute))
    d_probabilities = d_dropped if keep is None else d_dropped * keep * keep_scale
    rowsum = (d_probabilities * probabilities).sum(-1, keepdim=True)
    d_scores = probabilities * (d_probabilities - rowsum) * scale
    dq = torch.einsum("bhij,bjhd->bihd", d_scores, k.to(compute))
    dk = torch.einsum("bhij,bihd->bjhd", d_scores, q.to(compute))
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _dropout_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: torch.Tensor,
    seed: torch.Tensor,
    dropout_p: float,
    scale: float,
) -> torch.Tensor:
    keep = dropout_keep_mask(seed, q.shape[0], q.shape[2], q.shape[1], dropout_p, q.device)
    return attention_reference(q, k, v, lengths, keep, dropout_keep_scale(dropout_p), scale)


def _dropout_backward(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: torch.Tensor,
    seed: torch.Tensor,
    dropout_p: float,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Regenerates the mask from the key: no [B, H, L, L] tensor is kept between the passes."""
    keep = dropout_keep_mask(seed, q.shape[0], q.shape[2], q.shape[1], dropout_p, q.device)
    keep_scale = dropout_keep_scale(dropout_p)
    return attention_reference_backward(grad, q, k, v, lengths, keep, keep_scale, scale)


_forward_op = reference_op(
    "attention_dropout",
    _dropout_forward,
    "(Tensor q, Tensor k, Tensor v, Tensor lengths, Tensor seed, float dropout_p, float scale) "
    "-> Tensor",
)
_backward_op = reference_op(
    "attention_dropout_backward",
    _dropout_backward,
    "(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor lengths, Tensor seed, float dropout_p, "
    "float scale) -> (Tensor, Tensor, Tensor)",
)
_forward_op.register_fake(lambda q, k, v, lengths, seed, p, scale: torch.empty_like(q))
_backward_op.register_fake(
    lambda grad, q, k, v, lengths, seed, p, scale: tuple(torch.empty_like(t) for t in (q, k, v))
)


def _setup_context(ctx, inputs, output):
    q, k, v, lengths, seed, dropout_p, scale = inputs
    ctx.save_for_backward(q, k, v, lengths, seed)
    ctx.dropout_p, ctx.scale = dropout_p, scale


def _backward(ctx, grad):
    q, k, v, lengths, seed = ctx.saved_tensors
    dq, dk, dv = _backward_op(grad.contiguous(), q, k, v, lengths, seed, ctx.dropout_p, ctx.scale)
    return dq, dk, dv, None, None, None, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def _kernel_forward_fake(q, k, v, lengths, cu_seqlens, max_seqlen, seed, dropout_p, scale):
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    return out, q.new_empty(q.shape[:-1], dtype=torch.float32)


def _kernel_backward_fake(grad, q, k, v, out, lse, lengths, cu, max_seqlen, seed, p, scale):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _qkv_forward_fake(qkv, lengths, cu_seqlens, max_seqlen, seed, dropout_p, scale):
    shape = qkv.shape[:-3] + qkv.shape[-2:]
    return qkv.new_empty(shape), qkv.new_empty(shape[:-1], dtype=torch.float32)


def _qkv_backward_fake(grad, qkv, out, lse, lengths, cu, max_seqlen, seed, p, scale):
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


if _extension.EXTENSION_LOADED:
    for name, fake in (
        ("attention_forward", _kernel_forward_fake),
        ("attention_backward", _kernel_backward_fake),
        ("attention_qkv_forward", _qkv_forward_fake),
        ("attention_qkv_backward", _qkv_backward_fake),
    ):
        torch.library.register_fake(f"{_extension.LIBRARY}::{name}")(fake)
    # The autograd formulas of attention_forward and attention_qkv_forward are registered in C++
    # (csrc/ops/autograd.cpp).


def _packed_index(cu_seqlens: torch.Tensor, T: int, max_seqlen: int) -> torch.Tensor:
    """For each packed token, its row in the flattened padded [B * max_seqlen] layout."""
    tokens = torch.arange(T, device=cu_seqlens.device)
    sequence = torch.searchsorted(cu_seqlens[1:], tokens, right=True)
    return sequence * max_seqlen + tokens - cu_seqlens[sequence]


def _pad(t: torch.Tensor, index: torch.Tensor, B: int, L: int) -> torch.Tensor:
    padded = t.new_zeros((B * L,) + t.shape[1:])
    return padded.index_copy(0, index, t).view(B, L, *t.shape[1:])


def _check_inputs(q, k, v, lengths, cu_seqlens, max_seqlen, dropout_p, check_values) -> bool:
    """Validates the call; returns whether it uses the packed layout."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if q.dtype not in DTYPES:
        raise TypeError(f"q must be float32, bfloat16 or float16, got {q.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape or t.dtype != q.dtype or t.device != q.device:
            raise ValueError(
                f"{name} must match q ({tuple(q.shape)}, {q.dtype}, {q.device}), "
                f"got ({tuple(t.shape)}, {t.dtype}, {t.device})"
            )
    packed = cu_seqlens is not None
    if q.dim() != (3 if packed else 4):
        want = "[T, H, D] with cu_seqlens" if packed else "[B, L, H, D]"
        raise ValueError(f"q must have shape {want}, got {tuple(q.shape)}")
    D = q.shape[-1]
    if D % 8 != 0 or not 8 <= D <= MAX_HEAD_DIM:
        raise ValueError(f"the head dimension must be a multiple of 8 up to 256, got {D}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if packed:
        if lengths is not None:
            raise ValueError("give lengths (padded layout) or cu_seqlens (packed), not both")
        _check_cu_seqlens(cu_seqlens, max_seqlen, q, check_values)
    elif lengths is not None:
        _check_lengths(lengths, q, check_values)
    elif max_seqlen is not None:
        raise ValueError("max_seqlen belongs to the packed layout: give cu_seqlens with it")
    return packed


def _check_index_tensor(name: str, t, shape: tuple, q: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be an int32 or int64 tensor, got {getattr(t, 'dtype', t)}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {tuple(t.shape)}")
    if t.device != q.device:
        raise ValueError(f"{name} must be on q's device {q.device}, got {t.device}")


def _check_lengths(lengths, q, check_values) -> None:
    B, L = q.shape[:2]
    _check_index_tensor("lengths", lengths, (B,), q)
    if check_values and may_synchronise(lengths) and bool(((lengths < 0) | (lengths > L)).any()):
        raise ValueError(f"lengths must be in [0, L={L}], got {lengths.tolist()}")


def _check_cu_seqlens(cu_seqlens, max_seqlen, q, check_values) -> None:
    if cu_seqlens is None or cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
        raise ValueError(f"cu_seqlens must have shape [B + 1] with B >= 1, got {cu_seqlens}")
    _check_index_tensor("cu_seqlens", cu_seqlens, tuple(cu_seqlens.shape), q)
    if max_seqlen is None or int(max_seqlen) < 1:
        raise ValueError(f"max_seqlen must be given with cu_seqlens, at least 1, got {max_seqlen}")
    if not (check_values and may_synchronise(cu_seqlens)):
        return
    values = cu_seqlens.tolist()
    steps = [b - a for a, b in zip(values[:-1], values[1:], strict=True)]
    if values[0] != 0 or values[-1] != q.shape[0] or min(steps) < 0:
        raise ValueError(  # equal neighbours are allowed: an empty sequence
            f"cu_seqlens must not decrease, from 0 to T={q.shape[0]}, got {values[:8]}"
            f"{'...' if len(values) > 8 else ''}"
        )
    if max(steps) > max_seqlen:
        raise ValueError(f"max_seqlen={max_seqlen} is shorter than a sequence of {max(steps)}")
