"""Build-time helpers for setup.py (standard library only, so tests can import them too)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path


def _toolkit_root(path: Path) -> Path | None:
    """`path` if it is a CUDA toolkit (bin/nvcc beside the cudart library), else None."""
    has_nvcc = (path / "bin" / "nvcc").is_file()
    has_cudart = any(path.glob("lib64/libcudart.so*")) or any(path.glob("lib/libcudart.so*"))
    return path if has_nvcc and has_cudart else None


def find_cuda_home() -> Path | None:
    """CUDA_HOME, or the toolkit behind the nvcc on PATH.

    torch guesses the parent of the nvcc on PATH, which is wrong when that nvcc is a symbolic
    link or a wrapper script living outside the toolkit (then `-lcudart` fails to link).
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return Path(os.environ[var])
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    root = _toolkit_root(Path(nvcc).resolve().parent.parent)
    if root is not None:
        return root
    # A wrapper script: ask nvcc where it really lives.
    try:
        dry = subprocess.run(
            [nvcc, "--dryrun", "-v", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
            capture_output=True,
            text=True,
            timeout=60,
        ).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"^#\$ TOP=(.+)$", dry, flags=re.MULTILINE)
    return _toolkit_root(Path(match.group(1).strip()).resolve()) if match else None


def default_cuda_arch_list(capabilities: list[tuple[int, int]]) -> str | None:
    """TORCH_CUDA_ARCH_LIST for a build that names none, given the visible GPUs' capabilities.

    No GPU visible: 8.0 and 9.0a, the A100 and H100/H200 classes. Only 9.0 GPUs (H100, H200):
    9.0a, so that the wgmma kernels are built (torch's own choice would be plain 9.0, which has
    no wgmma). Anything else: None, torch's own choice (the visible GPUs' architectures).
    """
    if not capabilities:
        return "8.0;9.0a"
    if all(tuple(c) == (9, 0) for c in capabilities):
        return "9.0a"
    return None


def runs_sm90a_code(archs: list[str]) -> bool:
    """Whether a 9.0 device runs this build's sm_90a code: built for 9.0a and not for plain 9.0
    (with both, which of the two the driver loads is not ours to say)."""
    return "9.0a" in archs and "9.0" not in archs
