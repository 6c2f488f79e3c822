"""Training checkpoints: one file per saved step, written atomically (temporary file, fsync,
rename) so that an interrupted or failed save leaves the previous checkpoint whole; the last
K kept."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from electra_fast._files import atomic_path

_NAME = re.compile(r"^step-(\d+)\.pt$")


def checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of the saved checkpoints, oldest first."""
    if not directory.is_dir():
        return []
    found = [
        (int(m.group(1)), directory / m.group(0))
        for p in directory.iterdir()
        if (m := _NAME.match(p.name))
    ]
    return sorted(found)


def save_checkpoint(directory: Path, step: int, state: dict, keep: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{step:08d}.pt"
    with atomic_path(path) as temporary, open(temporary, "wb") as f:
        torch.save(state, f)
    for _, old in checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict:
    """One checkpoint file; a missing, damaged or foreign file is an error that names it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - damage shows as many kinds of error
        raise ValueError(f"{path} is not a readable checkpoint: {error}") from error
    if not isinstance(state, dict) or not {"model", "config"} <= state.keys():
        raise ValueError(f"{path} is not a pretraining checkpoint (it holds no model and config)")
    return state


def load_latest(directory: Path) -> tuple[dict, Path] | None:
    """The newest checkpoint that loads (a damaged newest one is skipped, with a warning)."""
    import warnings

    for _, path in reversed(checkpoints(directory)):
        try:
            return load_checkpoint(path), path
        except (ValueError, OSError) as error:  # try the previous one
            warnings.warn(f"skipping unreadable checkpoint {path}: {error}", stacklevel=2)
    return None
