"""Writes that an interruption cannot leave half done: the previous file or directory stays
whole until the new one is complete, and only then takes its place."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, text: str) -> None:
    """Writes `text` through a temporary file beside `path` and a rename."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def replace_directory(directory: Path, fill: Callable[[Path], None]) -> None:
    """Has `fill` write into an empty staging directory beside `directory`, then swaps the two.
    An error in `fill` leaves `directory` as it was (the staging directory is cleared at the
    next attempt); the swap is two renames, between which the old contents are whole at
    `.NAME.old`."""
    staging = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    fill(staging)
    old = directory.with_name(f".{directory.name}.old")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(staging, directory)
    shutil.rmtree(old, ignore_errors=True)
