"""Philox4x32-10 in vectorised torch: the twin of csrc/ops/philox.h, used by the reference ops.

Values are uint32 held in int64 tensors. 32x32-bit products are formed from 16-bit halves so
that no intermediate leaves int64's range.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
_MUL = (0xD2511F53, 0xCD9E8D57)
_WEYL = (0x9E3779B9, 0xBB67AE85)

# The third counter word of each op's stream; must match PhiloxStream in csrc/ops/philox.h.
STREAM_MASKING = 1
STREAM_SAMPLING = 2
STREAM_ATTENTION_DROPOUT = 3
STREAM_RESIDUAL_DROPOUT = 4


def _mulhilo(multiplier: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of multiplier * x for a constant multiplier < 2^32."""
    low_part = x * (multiplier & 0xFFFF)  # < 2^48
    high_part = x * (multiplier >> 16)  # < 2^48; the product is high_part * 2^16 + low_part
    middle = ((high_part & 0xFFFF) << 16) + low_part  # < 2^49
    return (high_part >> 16) + (middle >> 32), middle & MASK32


def philox4x32_10(
    counter: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    key: tuple[torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ten Philox rounds on broadcastable uint32 words (int64 tensors); returns four words."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        hi0, lo0 = _mulhilo(_MUL[0], c0)
        hi1, lo1 = _mulhilo(_MUL[1], c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _WEYL[0]) & MASK32
        k1 = (k1 + _WEYL[1]) & MASK32
    return c0, c1, c2, c3


def philox_elements(
    seed: torch.Tensor, index: torch.Tensor, stream: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four numbers of each element `index` (int64, >= 0) of `stream` under 0-d int64 `seed`.

    Same layout as philox_element() in csrc/ops/philox.h: counter (index lo, index hi, stream, 0),
    key (seed lo, seed hi).
    """
    key = (seed & MASK32, (seed >> 32) & MASK32)
    zero = torch.zeros_like(index)
    counter = (index & MASK32, (index >> 32) & MASK32, zero + stream, zero)
    return philox4x32_10(counter, key)
