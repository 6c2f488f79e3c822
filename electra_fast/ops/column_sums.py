"""A linear layer's bias gradient in one op: the float32 sums of its output's gradient over the
rows.

torch's `dY.sum(0)` computes the same, but in the H100 profile of an ELECTRA-small step
(benchmarks/results/2026-11-24_h100.md) its reductions of the bias gradients, bf16 [16384, N],
took 2.3 ms for about 1.1 GB (counted by hand): 0.5 TB/s, of the GPU's 3. The kernels here read
x once and sum it in fixed blocks of rows, whose partial sums are then added in a fixed order, so
that the result does not depend on the number of threads: on a GPU (csrc/ops/cuda/column_sums.cuh)
16 bytes at a time, each thread keeping its columns' sums in registers down its block; on the CPU
(csrc/ops/block_sums.h) four rows at a time.
"""

from __future__ import annotations

import torch

from electra_fast import _extension
from electra_fast.ops._common import FLOATS

OP = "column_sums"


def column_sums(x: torch.Tensor) -> torch.Tensor:
    """The sums of x over every dimension but the last.

    Args:
        x: [..., N], float32, bfloat16, float16 or float64.

    Returns:
        [N], float32 (float64 for float64 x), each the sum of its column's values in float32
        (the values are never rounded to x's dtype on the way); differentiable in x.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if x.dtype not in FLOATS:
        raise TypeError(f"x must be float32, bfloat16, float16 or float64, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError(f"x must have a last dimension, got shape {tuple(x.shape)}")
    if x.dtype != torch.float64 and _extension.use_kernel(OP, x.device):
        return torch.ops.electra_fast.column_sums(x.contiguous())
    return column_sums_reference(x)


def column_sums_reference(x: torch.Tensor) -> torch.Tensor:
    """Plain torch: the sums in float32 (float64 for float64 x)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return rows(x).sum(0, dtype=dtype)


def rows(x: torch.Tensor) -> torch.Tensor:
    """x as a matrix [M, N] of its rows (reshape(-1, N) cannot infer M when N is 0)."""
    return x.unsqueeze(0) if x.dim() == 1 else x.flatten(0, -2)


def _fake(x):
    return x.new_empty(x.shape[-1:], dtype=torch.float32)


if _extension.EXTENSION_LOADED:
    # The autograd formula is registered in C++ (csrc/ops/autograd.cpp).
    torch.library.register_fake(f"{_extension.LIBRARY}::{OP}")(_fake)
