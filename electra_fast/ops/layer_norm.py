"""The end of each block of a post-LayerNorm encoder in one op:
LayerNorm(residual + dropout(x + x_bias)), x_bias optional.

Where a compiled kernel takes the call (csrc/ops/layer_norm.cpp on the CPU, csrc/ops/cuda/
layer_norm.cu for a last dimension that is a multiple of 8 up to 6144), one pass reads x and
residual and writes the output, the row's mean and 1/std; the backward recomputes the sum and
the dropout mask from x, residual and the Philox key, so neither is stored. Otherwise the
plain-torch reference below computes the same function (same dropout stream).

Dropout: element (r, c) of the [M, H] rows is kept when the 16-bit half c % 8 of the Philox
element r * ceil(H / 8) + c / 8 (stream 4) is at least round(p * 2^16); kept values are scaled by
2^16 / (2^16 - t), as in the attention dropout (csrc/ops/layer_norm.h). The sum is formed in
fp32 and never rounded to the input dtype.

x_bias is for the linear layer that made x: called without its bias (F.linear(h, W)), that
layer's bias goes here, and its gradient comes out of this op's backward, summed over the rows
from the fp32 gradient of x the backward holds anyway, instead of a reduction of its own over
the rounded gradient (in an H100 profile of an ELECTRA-small step, torch's bias-gradient
reductions took 2.3 ms of 18.4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from electra_fast import _extension
from electra_fast.ops._common import FLOATS, philox_key
from electra_fast.ops._philox import STREAM_RESIDUAL_DROPOUT, philox_elements
from electra_fast.ops.attention import dropout_keep_scale, dropout_threshold

OP = "dropout_add_layer_norm"
CUDA_MAX_HIDDEN = 6144
CUDA_MAX_HIDDEN_X_BIAS = 4096  # the backward's shared memory holds three sums per column


def dropout_add_layer_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    x_bias: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    eps: float = 1e-5,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    with_out_x: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """layer_norm(residual + dropout(x + x_bias, dropout_p)) * weight + bias over the last
    dimension.

    Args:
        x: [..., H]: the block's output (a linear layer's, under autocast often bfloat16).
        residual: x's shape: the block's input. The output has the dtype torch's ops would give
            it: the dtype both promote to (float32 for a bfloat16 x and a float32 residual), or
            float32 under CUDA autocast, where layer_norm runs in float32 whatever its input.
        weight, bias: [H], the LayerNorm's affine parameters.
        x_bias: [H] or None: a bias added to x before the dropout, in fp32 (the bias of the
            linear layer that made x, which then runs without it).
        dropout_p: dropout on x, in [0, 1).
        eps: added to the variance.
        generator, seed: where the Philox key of the dropout comes from, as for mask_tokens.
        with_out_x: also return the output in x's dtype. Under CUDA autocast the output is
            float32 (the next block's residual) while the next block's matmul wants it in x's
            bfloat16: the kernel writes both in one pass, and its backward adds the two
            gradients, where a cast and autograd's sum of the two would each be a kernel.

    Returns:
        The normalised sum, differentiable in x, residual, weight, bias and x_bias; with
        `with_out_x`, (out, out_x), out_x equal to out.to(x.dtype) (out itself when the dtypes
        are the same) and differentiable like it.
    """
    _check_inputs(x, residual, weight, bias, x_bias, dropout_p, eps)
    x_dtype = x.dtype
    # (promote_types is an op of its own: a trip through the dispatcher saved per layer.)
    dtype = x.dtype if x.dtype == residual.dtype else torch.promote_types(x.dtype, residual.dtype)
    if autocast_to_float32(x):
        dtype = torch.float32
    residual = residual.to(dtype).contiguous()
    mixed = dtype == torch.float32 and x.dtype in (torch.bfloat16, torch.float16)
    x = (x if mixed else x.to(dtype)).contiguous()
    key = philox_key(x.device, generator, seed, like="x") if dropout_p > 0 else None
    if use_kernel(x, dtype):
        if x_bias is not None and x.is_cuda and x.shape[-1] > CUDA_MAX_HIDDEN_X_BIAS:
            # Rows too wide for the kernel with x_bias: the sum first (fp32 where residual is).
            wide = torch.float32 if residual.dtype == torch.float32 else x.dtype
            x, x_bias = (x.float() + x_bias.float()).to(wide).contiguous(), None
        in_kernel = with_out_x and x.dtype != dtype  # x still of x_dtype, the output's differs
        out, _, _, out_x = torch.ops.electra_fast.dropout_add_layer_norm(
            x, residual, weight.float(), bias.float(), None if x_bias is None else x_bias.float(),
            key, float(dropout_p), float(eps), in_kernel,
        )  # fmt: skip
        if not with_out_x:
            return out
        return out, out_x if in_kernel else out.to(x_dtype)
    out = dropout_add_layer_norm_reference(
        x, residual, weight, bias, key, dropout_p, eps, x_bias=x_bias
    )
    return (out, out.to(x_dtype)) if with_out_x else out


def autocast_to_float32(x: torch.Tensor) -> bool:
    """Whether autocast runs this call in float32 whatever its inputs: CUDA autocast does, as it
    does torch's layer_norm; CPU autocast leaves layer_norm in its input's dtype.
    (benchmarks/step_traffic.py replaces this function to record a step as CUDA runs it.)"""
    return x.is_cuda and torch.is_autocast_enabled("cuda")


def use_kernel(x: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether a call with this x (after the dtypes were matched) runs the compiled kernel."""
    if dtype == torch.float64 or not _extension.use_kernel(OP, x.device):
        return False
    H = x.shape[-1]
    return x.device.type == "cpu" or (H % 8 == 0 and H <= CUDA_MAX_HIDDEN)


def residual_keep_mask(
    seed: torch.Tensor, rows: int, H: int, dropout_p: float, device: torch.device
) -> torch.Tensor:
    """[rows, H] bool: which elements of x survive the dropout."""
    groups = (H + 7) // 8
    index = torch.arange(rows * groups, device=device).view(rows, groups)
    words = torch.stack(philox_elements(seed, index, STREAM_RESIDUAL_DROPOUT), dim=-1)
    halves = torch.stack((words & 0xFFFF, words >> 16), dim=-1).flatten(1)[:, :H]
    return halves >= dropout_threshold(dropout_p)


def dropout_add_layer_norm_reference(x, residual, weight, bias, seed, dropout_p, eps, x_bias=None):
    """Plain torch, in fp32 (fp64 for fp64 inputs), differentiable; `seed` the Philox key."""
    compute = torch.float64 if residual.dtype == torch.float64 else torch.float32
    branch = x.to(compute) if x_bias is None else x.to(compute) + x_bias.to(compute)
    if dropout_p > 0:
        keep = residual_keep_mask(seed, x.numel() // x.shape[-1], x.shape[-1], dropout_p, x.device)
        # A dropped element is 0 even where x is not finite, as in the kernels.
        scaled = branch * dropout_keep_scale(dropout_p)
        branch = torch.where(keep.view(x.shape), scaled, scaled.new_zeros(()))
    total = residual.to(compute) + branch
    out = F.layer_norm(total, x.shape[-1:], weight.to(compute), bias.to(compute), eps)
    return out.to(residual.dtype)


def _check_inputs(x, residual, weight, bias, x_bias, dropout_p, eps) -> None:
    tensors = [("x", x), ("residual", residual), ("weight", weight), ("bias", bias)]
    for name, t in tensors + ([("x_bias", x_bias)] if x_bias is not None else []):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.dtype not in FLOATS:
            raise TypeError(f"{name} must be float32, bfloat16, float16 or float64, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} must be on x's device {x.device}, got {t.device}")
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"x must have a last dimension, got shape {tuple(x.shape)}")
    if residual.shape != x.shape:
        raise ValueError(
            f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}"
        )
    H = x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias), ("x_bias", x_bias)):
        if t is not None and t.shape != (H,):
            raise ValueError(f"{name} must have shape [{H}], got {tuple(t.shape)}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")


def _forward_fake(x, residual, weight, bias, x_bias, seed, dropout_p, eps, with_out_x):
    stats = residual.new_empty(residual.shape[:-1], dtype=torch.float32)
    out_x = torch.empty_like(x) if with_out_x else x.new_empty(0)
    return torch.empty_like(residual), stats, torch.empty_like(stats), out_x


def _backward_fake(grad_out, grad_out_x, x, residual, weight, x_bias, mean, rstd, seed, dropout_p):
    parameters = 2 if x_bias is None else 3
    return (
        torch.empty_like(x),
        torch.empty_like(residual),
        weight.new_empty(parameters, *weight.shape),
    )


if _extension.EXTENSION_LOADED:
    # The autograd formula is registered in C++ (csrc/ops/autograd.cpp).
    torch.library.register_fake(f"{_extension.LIBRARY}::{OP}")(_forward_fake)
    torch.library.register_fake(f"{_extension.LIBRARY}::{OP}_backward")(_backward_fake)
