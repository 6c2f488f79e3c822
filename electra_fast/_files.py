"""Writes that an interruption cannot leave half done: the previous file or directory stays
whole until the new one is complete, and only then takes its place; logs that a killed writer
cannot leave unreadable."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` for the block to write the new file to. When the block
    ends normally the file is synced to disk and renamed over `path`, and the rename synced too:
    a crash at any moment leaves either the old file or the new one, whole. When the block
    raises, the temporary file is removed and `path` is left as it was."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        yield temporary
        with open(temporary, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
        _sync_directory(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomically(path: Path, text: str) -> None:
    """Writes `text` (UTF-8) to `path` through atomic_path."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def _sync_directory(directory: Path) -> None:
    """Makes a rename in `directory` durable: on POSIX file systems the new name lives in the
    directory, which has its own sync. (Windows cannot open a directory: nothing to do there.)"""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def open_log(path: Path):
    """A JSON-lines log opened for appending (UTF-8). A process killed while writing a record
    can leave its line unfinished; that part is cut first, so that the next record starts a
    line of its own (an append would glue the two into one line that no reader can parse)."""
    if path.is_file():
        with open(path, "rb+") as f:
            end = f.seek(0, os.SEEK_END)
            if end > 0:
                f.seek(end - 1)
                if f.read(1) != b"\n":
                    f.truncate(_after_last_newline(f, end))
    return open(path, "a", encoding="utf-8")  # noqa: SIM115 (the caller closes it)


def _after_last_newline(f, end: int, chunk: int = 1 << 16) -> int:
    """The offset just past the last newline before `end` in binary file `f` (0 if none),
    read backwards a chunk at a time rather than reading a long log whole."""
    while end > 0:
        start = max(0, end - chunk)
        f.seek(start)
        found = f.read(end - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        end = start
    return 0


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
