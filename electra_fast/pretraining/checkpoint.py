"""Training checkpoints: one file per saved step, written atomically (temporary file, fsync,
rename) so that an interrupted or failed save leaves the previous checkpoint whole; the last
K kept. Only rank 0 writes them; every rank resumes from the one rank 0 finds (resume_point)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
import torch.distributed as dist

from electra_fast._files import atomic_path
from electra_fast.distributed import failures, said

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


def resume_point(directory: Path, resume: bool, rank: int, world: int) -> tuple[dict, Path] | None:
    """The checkpoint a run resumes from, decided by rank 0 for all `world` ranks (a process
    group joined when world > 1): the newest that loads as rank 0 sees `directory`, or None to
    start afresh. With `resume` False, checkpoints in rank 0's `directory` are an error.

    Every rank loads the file rank 0 chose, not the newest it sees itself, and none when rank 0
    found none. Only rank 0 writes checkpoints, so on several machines `directory` must be one
    they all read. A rank that cannot read rank 0's file (on another machine's disk, or damaged
    in its copy) makes every rank raise the same error, rather than resuming from another step
    or from scratch beside the others: DistributedDataParallel would give it rank 0's weights,
    but not the optimiser's moments, the step or the data position, and the ranks would part
    silently (or wait for each other forever at the end). Errors are raised on every rank
    alike, so that none is left waiting for the others."""
    found = None
    decision: list = [None]
    if rank == 0:
        if not resume and checkpoints(directory):
            decision = [
                (
                    "refuse",
                    f"{directory.parent} already holds checkpoints and --no-resume was given",
                )
            ]
        else:
            found = load_latest(directory) if resume else None
            decision = [("load", found[1].name if found is not None else None)]
    if world > 1:
        dist.broadcast_object_list(decision, src=0)
    action, value = decision[0]
    if action == "refuse":
        raise ValueError(value)
    saved, problem = found, None
    if rank != 0 and value is not None:
        path = directory / value
        try:
            saved = load_checkpoint(path), path
        except (ValueError, OSError) as error:
            problem = f"{type(error).__name__}: {error}"
    failed = failures(problem)
    if failed:
        raise RuntimeError(
            f"rank 0 resumes from {directory / value}, which rank(s) {sorted(failed)} cannot "
            f"read ({said(failed)}). Only rank 0 writes checkpoints: on several machines, --out "
            f"must be on a filesystem they all share (or its checkpoints/ copied to each machine)"
        )
    return saved
