"""ELECTRA's masking (`pretrain_helpers.mask` of google-research/electra) as one op.

`mask_tokens` validates its arguments, draws a Philox key from the device's generator, and runs
the compiled kernel (csrc/ops/masking.cpp, csrc/ops/cuda/masking.cu) or, without one,
`mask_tokens_reference`. All three compute the same function of (inputs, key), bit for bit.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import torch

from electra_fast import _extension
from electra_fast.ops._common import may_synchronise, philox_key, reference_op
from electra_fast.ops._philox import STREAM_MASKING, philox_elements

OP = "mask_tokens"
STRATEGIES = ("fixed", "bernoulli")


class MaskedTokens(NamedTuple):
    masked_ids: torch.Tensor  # [B, L], input_ids' dtype
    positions: torch.Tensor  # [B, N] int64, ascending in the used slots, 0 in unused ones
    labels: torch.Tensor  # [B, N] int64, the original ids at `positions`, 0 in unused slots
    weights: torch.Tensor  # [B, N] float32, 1 for a used slot, 0 for an unused one


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    mask_token_id: int,
    special_token_ids: Iterable[int],
    vocab_size: int,
    mask_prob: float = 0.15,
    max_predictions: int | None = None,
    replace_prob: float = 0.85,
    random_prob: float = 0.0,
    strategy: str = "fixed",
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    row_offset: int = 0,
    check_values: bool = True,
) -> MaskedTokens:
    """Choose positions to predict and corrupt them, as ELECTRA's pretraining does.

    Args:
        input_ids: [B, L] int32 or int64 token ids, all in [0, vocab_size).
        attention_mask: [B, L], nonzero for tokens, 0 for padding (bool or integer); None: no
            padding.
        mask_token_id: the [MASK] id; always treated as special.
        special_token_ids: ids never chosen nor drawn as random tokens ([CLS], [SEP], [PAD]...).
        vocab_size: the vocabulary size V.
        mask_prob: in (0, 1]. "fixed": each sequence gets k = max(1, min(N, round(mask_prob * n)))
            positions, n its non-padding tokens (specials included), drawn uniformly without
            replacement among its candidates (non-padding, non-special); all of them if fewer.
            "bernoulli": each candidate independently with probability mask_prob, capped at N.
        max_predictions: N, the number of slots; default int((mask_prob + 0.005) * L).
        replace_prob, random_prob: a chosen position becomes [MASK] with probability
            replace_prob, a uniformly random non-special id with probability random_prob, and
            keeps its token otherwise. ELECTRA: 0.85 / 0.0; BERT: 0.8 / 0.1.
        strategy: "fixed" (ELECTRA) or "bernoulli" (BERT's habit).
        generator: the torch generator of the tensors' device to draw the Philox key from;
            default: the device's default generator, so torch.manual_seed makes runs repeatable.
        seed: an explicit Philox key instead of a draw; the same seed gives the same result on
            every device and implementation. An int, or a 0-d int64 tensor on input_ids'
            device: what a step under torch.compile or in a CUDA graph takes, the key drawn
            outside it (torch.compile cannot trace an explicit generator).
        row_offset: the index of the first row in the random stream. Data-parallel ranks that
            share a key and pass rank * B mask their slices exactly as one process would mask
            the whole batch.
        check_values: check that the ids are in [0, vocab_size), which on a GPU reads them
            back (the host waits for the device); False for ids the caller checked already.
            Unchecked ids are only compared and copied, never used as indices; the CPU kernel
            rejects out-of-range ones as it reads them, whatever check_values says.

    Returns:
        MaskedTokens(masked_ids [B, L], positions [B, N], labels [B, N], weights [B, N]). Shapes
        depend only on the input shapes, so the op works under torch.compile and CUDA graphs.
    """
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a tensor, got {type(input_ids).__name__}")
    if input_ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"input_ids must be int32 or int64, got {input_ids.dtype}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape [B, L], got {tuple(input_ids.shape)}")
    attention_mask = _as_attention_mask(attention_mask, input_ids)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if not 0.0 < mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob}")
    if replace_prob < 0 or random_prob < 0 or replace_prob + random_prob > 1.0:
        raise ValueError(
            "replace_prob and random_prob must be non-negative and sum to at most 1, "
            f"got {replace_prob} and {random_prob}"
        )
    if max_predictions is None:
        max_predictions = int((mask_prob + 0.005) * input_ids.shape[1])
    if max_predictions < 1:
        raise ValueError(
            f"max_predictions must be at least 1, got {max_predictions} (the default is "
            f"int((mask_prob + 0.005) * L) with L = {input_ids.shape[1]})"
        )
    special_ids = sorted({int(i) for i in special_token_ids} | {int(mask_token_id)})
    if not 0 <= mask_token_id < vocab_size:
        raise ValueError(
            f"mask_token_id must be in [0, vocab_size={vocab_size}), got {mask_token_id}"
        )
    if special_ids[0] < 0 or special_ids[-1] >= vocab_size:
        raise ValueError(
            f"special_token_ids must be in [0, vocab_size={vocab_size}), got {special_ids}"
        )
    if random_prob > 0 and len(special_ids) >= vocab_size:
        raise ValueError(
            f"random_prob > 0 needs a non-special token, but all {vocab_size} ids are special"
        )
    if row_offset < 0:
        raise ValueError(f"row_offset must be non-negative, got {row_offset}")
    key = philox_key(input_ids.device, generator, seed, like="input_ids")
    args = (
        special_ids,
        int(mask_token_id),
        int(vocab_size),
        float(mask_prob),
        int(max_predictions),
        float(replace_prob),
        float(random_prob),
        strategy == "bernoulli",
        int(row_offset),
    )
    kernel = _extension.use_kernel(OP, input_ids.device)
    # The CPU kernel checks the ids as it reads them, whatever check_values says.
    if check_values and not (kernel and input_ids.device.type == "cpu"):
        _check_ids(input_ids, vocab_size)
    op = torch.ops.electra_fast.mask_tokens if kernel else torch.ops.electra_fast_ref.mask_tokens
    return MaskedTokens(*op.default(input_ids, attention_mask, key, *args))


def _as_attention_mask(
    attention_mask: torch.Tensor | None, input_ids: torch.Tensor
) -> torch.Tensor:
    if attention_mask is None:
        return torch.ones_like(input_ids)
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a tensor, got {type(attention_mask).__name__}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask must have input_ids' shape {tuple(input_ids.shape)}, "
            f"got {tuple(attention_mask.shape)}"
        )
    if attention_mask.device != input_ids.device:
        raise ValueError(
            f"attention_mask must be on input_ids' device {input_ids.device}, "
            f"got {attention_mask.device}"
        )
    if attention_mask.dtype.is_floating_point or attention_mask.dtype.is_complex:
        raise TypeError(f"attention_mask must be bool or integer, got {attention_mask.dtype}")
    return attention_mask.to(input_ids.dtype).contiguous()


def _check_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    if not may_synchronise(input_ids):
        return
    low, high = (int(v) for v in torch.aminmax(input_ids))
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"input_ids must be in [0, vocab_size={vocab_size}), got values from {low} to {high}"
        )


def mask_tokens_reference(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    seed: torch.Tensor,
    special_ids: list[int],
    mask_token_id: int,
    vocab_size: int,
    mask_prob: float,
    max_predictions: int,
    replace_prob: float,
    random_prob: float,
    bernoulli: bool,
    row_offset: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The op in vectorised torch, argument for argument like torch.ops.electra_fast.mask_tokens.

    It sorts every row by key where the kernels select in linear time; the result is the same.
    """
    B, L = input_ids.shape
    N, device = max_predictions, input_ids.device
    specials = sorted(set(special_ids) | {mask_token_id})
    ids = input_ids.long()
    is_token = attention_mask != 0
    # No tensor made from Python values on the device: that copy cannot be recorded in a CUDA
    # graph (the specials are a handful of ids; the rate multiplies as a float32 either way).
    is_special = functools.reduce(operator.or_, (ids == special for special in specials))
    candidate = is_token & ~is_special
    index = torch.arange(B * L, device=device).view(B, L)
    key, decision, token_draw, _ = philox_elements(seed, index + row_offset * L, STREAM_MASKING)
    mask_prob32 = float(np.float32(mask_prob))
    if bernoulli:
        candidate &= key.double() < mask_prob32 * 2.0**32
        wanted = torch.full((B,), N, device=device)
    else:
        product = is_token.sum(1).float() * mask_prob32
        wanted = product.round().long().clamp(min=1, max=N)  # round half to even, as tf.round
    k = torch.minimum(wanted, candidate.sum(1))

    # Rank candidates by (key, position): a stable sort keeps positions in order among ties.
    order = torch.sort(torch.where(candidate, key, 2**32), dim=1, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(L, device=device).expand(B, L))
    chosen = candidate & (rank < k[:, None])
    slot = torch.where(chosen, chosen.long().cumsum(1) - 1, N)  # slot N collects the unchosen
    positions = torch.zeros(B, N + 1, dtype=torch.long, device=device)
    positions.scatter_(1, slot, index % L)
    positions = positions[:, :N].contiguous()
    used = torch.arange(N, device=device) < k[:, None]
    labels = torch.where(used, ids.gather(1, positions), 0)

    u = (decision >> 8).double() * 2.0**-24
    random_token = (token_draw * (vocab_size - len(specials))) >> 32
    for special in specials:  # the random_token-th non-special id
        random_token += (random_token >= special).long()
    replaced = torch.where(
        u < replace_prob,
        mask_token_id,
        torch.where(u < replace_prob + random_prob, random_token, ids),
    )
    masked = torch.where(chosen, replaced, ids).to(input_ids.dtype)
    return masked, positions, labels, used.float()


def _mask_tokens_fake(
    input_ids,
    attention_mask,
    seed,
    special_ids,
    mask_token_id,
    vocab_size,
    mask_prob,
    max_predictions,
    replace_prob,
    random_prob,
    bernoulli,
    row_offset,
):
    torch._check(input_ids.dim() == 2, lambda: "input_ids must have shape [B, L]")
    torch._check(
        attention_mask.shape == input_ids.shape,
        lambda: "attention_mask must have input_ids' shape",
    )
    slots = (input_ids.shape[0], max_predictions)
    return (
        torch.empty_like(input_ids),
        input_ids.new_empty(slots, dtype=torch.int64),
        input_ids.new_empty(slots, dtype=torch.int64),
        input_ids.new_empty(slots, dtype=torch.float32),
    )


# The reference as an opaque op of its own, so that torch.compile treats the fallback like the
# kernel: one node in the graph. Traced into instead, inductor takes many minutes to generate code
# for the ten Philox rounds fused with the sort.
_mask_tokens_reference_op = reference_op(
    OP,
    mask_tokens_reference,
    "(Tensor input_ids, Tensor attention_mask, Tensor seed, int[] special_ids, "
    "int mask_token_id, int vocab_size, float mask_prob, int max_predictions, "
    "float replace_prob, float random_prob, bool bernoulli, int row_offset) "
    "-> (Tensor, Tensor, Tensor, Tensor)",
)
_mask_tokens_reference_op.register_fake(_mask_tokens_fake)
if _extension.EXTENSION_LOADED:
    torch.library.register_fake(f"{_extension.LIBRARY}::{OP}")(_mask_tokens_fake)
