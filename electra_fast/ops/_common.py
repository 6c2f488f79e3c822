"""Pieces every op's Python wrapper needs: the Philox key of a call, whether a validation
that synchronises with the device may run, and the reference implementations as ops."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable

import torch

from electra_fast._extension import REFERENCE_LIBRARY

# The dtypes the elementwise ops take: their kernels' three, and float64 for their references.
FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def philox_key(
    device: torch.device,
    generator: torch.Generator | None,
    seed: int | torch.Tensor | None,
    *,
    like: str,
) -> torch.Tensor:
    """A 0-d int64 tensor on `device` holding the Philox key for one call: `seed` when given
    (an int, or a 0-d int64 tensor on `device`, used as it is), else a draw from `generator`
    (default: the device's default generator). `like` names the tensor whose device the
    generator or the seed must match, for the error message.

    A tensor seed is what a compiled or graph-captured step takes: drawn outside it from a
    generator torch.compile cannot trace, it enters the graph as an input, and every replay
    reads its current value on the device."""
    if isinstance(seed, torch.Tensor):
        if generator is not None:
            raise ValueError("give seed or generator, not both")
        if seed.dim() != 0 or seed.dtype != torch.int64:
            raise ValueError(
                f"seed must be a 0-d int64 tensor, got {seed.dtype} of shape {tuple(seed.shape)}"
            )
        if seed.device != device:
            raise ValueError(f"seed must be on {like}'s device {device}, got {seed.device}")
        return seed
    if seed is not None:
        try:
            seed = operator.index(seed)
        except TypeError:
            raise TypeError(f"seed must be an int or a 0-d int64 tensor, got {seed!r}") from None
        if not -(2**63) <= seed < 2**64:
            raise ValueError(f"seed must fit in 64 bits, got {seed}")
        return torch.tensor(
            seed - 2**64 if seed >= 2**63 else seed, dtype=torch.int64, device=device
        )
    if generator is not None and generator.device.type != device.type:
        raise ValueError(
            f"generator must be a {device.type} generator like {like}'s device, "
            f"got a {generator.device.type} one"
        )
    return draw_philox_keys(device, generator, ())


def draw_philox_keys(
    device: torch.device | str, generator: torch.Generator | None, shape: tuple
) -> torch.Tensor:
    """int64 Philox keys of `shape` on `device`, uniform over 64 bits, drawn from `generator`
    (default: the device's default generator). Out of place (not Tensor.random_), so that
    torch.compile traces the draw into the graph."""
    return torch.randint(
        -(2**63), 2**63 - 1, shape, dtype=torch.int64, device=device, generator=generator
    )


def may_synchronise(tensor: torch.Tensor) -> bool:
    """Whether a check that reads `tensor`'s values back to the host may run: not while
    torch.compile traces, nor while a CUDA graph is captured, nor for an empty tensor."""
    if tensor.numel() == 0 or torch.compiler.is_compiling():
        return False
    return not (tensor.is_cuda and torch.cuda.is_current_stream_capturing())


# torch.mm(..., out_dtype=) (aten::mm.dtype, pytorch/pytorch#150812): CUDA only, torch >= 2.8.
_MM_OUT_DTYPE = "dtype" in torch.ops.aten.mm.overloads()


def mm_float32(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b of two bfloat16 or float16 matrices, accumulated and returned in float32: the
    product is never rounded to the inputs' dtype. On CUDA one matmul that writes float32
    (cuBLAS accumulates in float32 anyway), so a float32 parameter's gradient needs no cast
    kernel after it; on the CPU the same product from float32 copies of the inputs. `out`: a
    float32 [a.shape[0], b.shape[1]] tensor to write. (On CUDA with a torch older than 2.8,
    the product in the inputs' dtype, widened: what autocast's backward gives.)"""
    # device.type, not is_cuda: torch 2.6's dynamo cannot trace is_cuda in a backward.
    if a.device.type != "cuda" or a.dtype == torch.float32:
        return torch.mm(a.float(), b.float(), out=out)
    if _MM_OUT_DTYPE:
        return torch.mm(a, b, out_dtype=torch.float32, out=out)
    product = torch.mm(a, b)
    return product.float() if out is None else out.copy_(product)


def reference_op(name: str, function: Callable, schema: str, mutates_args: Iterable[str] = ()):
    """`function` as the op REFERENCE_LIBRARY::`name` (torch.library.custom_op), so that
    torch.compile treats a reference like a kernel: one opaque node. `schema` is spelled out,
    as the kernel's in csrc/ops/schemas.cpp, rather than inferred from the annotations: torch
    2.6 and older cannot infer it from `list[int]`, 2.4 not from postponed annotations."""
    return torch.library.custom_op(
        f"{REFERENCE_LIBRARY}::{name}", mutates_args=tuple(mutates_args), schema=schema
    )(function)
