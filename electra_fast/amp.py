"""Mixed precision for the training loops, one rule for pretraining and finetuning: what a
`precision` setting means on a device, and the loss scaler that fp16 needs."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def check(precision: str) -> None:
    """A precision setting other than PRECISIONS is an error that names it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def resolve(precision: str, device: torch.device) -> str:
    """What `precision` means on `device`: auto is bf16 on a GPU that has it, fp16 (with loss
    scaling) on one that has not, such as a T4 or a V100, and fp32 on the CPU."""
    check(precision)
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def autocast(
    precision: str, device: torch.device, *, cache: bool = True
) -> Callable[[], AbstractContextManager]:
    """A factory of the autocast context of the resolved precision (fp32: no autocast).
    cache=False: no cast weight kept for reuse within the context, which a region recorded as
    a CUDA graph needs (torch's CUDA graph notes)."""
    chosen = resolve(precision, device)
    if chosen == "fp32":
        return nullcontext
    dtype = torch.bfloat16 if chosen == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype, cache_enabled=cache)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16's loss scaler (without one its small gradients underflow); None otherwise."""
    if resolve(precision, device) != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
