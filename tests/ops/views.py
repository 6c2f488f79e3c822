"""Tensor layouts the kernels must handle besides the usual one."""

import torch


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """t's values in a view that starts one element into its storage: off 16-byte alignment."""
    storage = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    view = storage[1:].view(t.shape)
    view.copy_(t)
    return view
