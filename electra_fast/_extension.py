"""Loading electra_fast._C and choosing, per call, between its kernels and the torch references.

A kernel is used when the extension loaded, has a kernel for the tensor's device, and
ELECTRA_FAST_REFERENCE is not set to 1. Otherwise the pure-torch reference runs: same semantics,
same random stream, slower.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

LIBRARY = "electra_fast"
# The torch references, registered as opaque ops of their own (see electra_fast/ops/*.py).
REFERENCE_LIBRARY = "electra_fast_ref"
# Every op declared in csrc/ops/schemas.cpp.
OP_NAMES = (
    "mask_tokens",
    "generator_step",
    "generator_step_tile",
    "generator_step_backward",
    "generator_step_backward_",
    "attention_forward",
    "attention_backward",
    "attention_qkv_forward",
    "attention_qkv_backward",
    "dropout_add_layer_norm",
    "dropout_add_layer_norm_backward",
    "bias_gelu",
    "bias_gelu_backward",
    "column_sums",
)
# Registrations that the Python side relies on and does not make itself: a build without them
# is treated as not loaded (after a `git pull` without a rebuild, say).
EXPECTED_REGISTRATIONS = (
    *((op, "CPU") for op in OP_NAMES),
    ("attention_forward", "Autograd"),  # csrc/ops/autograd.cpp
    ("attention_qkv_forward", "Autograd"),
    ("dropout_add_layer_norm", "Autograd"),
    ("bias_gelu", "Autograd"),
    ("column_sums", "Autograd"),
)
# An argument per op whose schema gained it last: a build of older sources lacks it.
EXPECTED_ARGUMENTS = {"dropout_add_layer_norm": "with_out_x"}
_BUILD_INFO = Path(__file__).with_name("_build_info.json")


def _env_flag(name: str) -> bool:
    value = os.environ.get(name, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"{name} must be 0, 1 or unset, got {value!r}")
    return value == "1"


def build_info() -> dict:
    """What setup.py recorded when it built _C (empty when it never did)."""
    try:
        return json.loads(_BUILD_INFO.read_text())
    except (OSError, ValueError):
        return {}


def sm90a_kernels_built() -> bool:
    """Whether the loaded build has the sm_90a (wgmma) kernels that H100/H200 run."""
    return EXTENSION_LOADED and bool(build_info().get("sm90a_kernels"))


def _load() -> str | None:
    """Imports _C; returns None on success, else the reason it could not be loaded."""
    try:
        from electra_fast import _C  # noqa: F401  (loading it registers the ops)
    except (ImportError, OSError) as error:
        built = build_info().get("torch")
        reason = f"{type(error).__name__}: {error}"
        if built and built != torch.__version__:
            reason = f"built for torch {built}, running torch {torch.__version__} ({reason})"
        return reason
    missing = [f"{op} ({key})" for op, key in EXPECTED_REGISTRATIONS if not _has(op, key)]
    missing += [
        f"{op}'s argument {argument}"
        for op, argument in EXPECTED_ARGUMENTS.items()
        if argument not in _arguments(op)
    ]
    if missing:  # a build of older sources, still importable
        return f"the build predates these sources: it lacks {', '.join(missing)}"
    return None


def _arguments(op: str) -> list[str]:
    schema = getattr(getattr(torch.ops, LIBRARY), op).default._schema
    return [argument.name for argument in schema.arguments]


def _has(op: str, dispatch_key: str) -> bool:
    name = f"{LIBRARY}::{op}"
    return torch._C._dispatch_has_kernel(name) and torch._C._dispatch_has_kernel_for_dispatch_key(
        name, dispatch_key
    )


FORCE_REFERENCE = _env_flag("ELECTRA_FAST_REFERENCE")
EXTENSION_ERROR = _load()
EXTENSION_LOADED = EXTENSION_ERROR is None
if not EXTENSION_LOADED:
    warnings.warn(
        f"electra_fast: the compiled kernels could not be loaded ({EXTENSION_ERROR}); "
        "using the pure-torch reference ops, which are slower. Rebuild with "
        "`pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )


def _registered(op: str, dispatch_key: str) -> bool:
    return EXTENSION_LOADED and _has(op, dispatch_key)


# Looked up once: a plain dict is cheap per call and torch.compile traces through it.
KERNELS = {op: {"cpu": _registered(op, "CPU"), "cuda": _registered(op, "CUDA")} for op in OP_NAMES}


def has_kernel(op: str, device_type: str) -> bool:
    """Whether _C registered a kernel for `op` on `device_type` ("cpu" or "cuda")."""
    return KERNELS[op].get(device_type, False)


def use_kernel(op: str, device: torch.device) -> bool:
    """Whether a call of `op` on `device` should run the compiled kernel."""
    return not FORCE_REFERENCE and has_kernel(op, device.type)
