"""Reading corpora: files, directories and globs; gzip, bz2 and xz read as streams; invalid
UTF-8 replaced and counted. ELECTRA's format: a sentence (or paragraph) per line, a blank line
between documents.

Plain files are cut into units of about `UNIT_BYTES` at blank lines, so that a large file is
prepared by several processes and the units (hence the examples) do not depend on how many.
"""

from __future__ import annotations

import bz2
import codecs
import glob
import gzip
import lzma
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

UNIT_BYTES = 4 << 20
COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files, directories (every file below them) and glob patterns → sorted unique files."""
    found: set[Path] = set()
    for item in inputs:
        text = str(item)
        if any(c in text for c in "*?["):
            matches = [Path(m) for m in glob.glob(text, recursive=True) if Path(m).is_file()]
            if not matches:
                raise FileNotFoundError(f"no file matches the input pattern {text!r}")
            found.update(matches)
        elif Path(text).is_dir():
            files = [p for p in Path(text).rglob("*") if p.is_file() and not p.name.startswith(".")]
            if not files:
                raise FileNotFoundError(f"the input directory {text} holds no files")
            found.update(files)
        elif Path(text).is_file():
            found.add(Path(text))
        else:
            raise FileNotFoundError(f"input path {text} does not exist")
    return sorted(found)


@dataclass(frozen=True)
class Unit:
    """Lines of one file: bytes [start, end) of a plain file, or a whole compressed one."""

    file_index: int
    unit_index: int
    path: Path
    start: int = 0
    end: int | None = None

    @property
    def name(self) -> str:
        return f"{self.file_index:05d}-{self.unit_index:05d}"


def split_units(files: list[Path], unit_bytes: int = UNIT_BYTES) -> list[Unit]:
    """Each file's units: plain files cut at the first blank line after every `unit_bytes`."""
    units = []
    for index, path in enumerate(files):
        if path.suffix in COMPRESSED:
            units.append(Unit(index, 0, path))
            continue
        starts = [0]
        size = path.stat().st_size
        with open(path, "rb") as f:
            while starts[-1] + unit_bytes < size:
                cut = _next_document(f, starts[-1] + unit_bytes)
                if cut is None or cut >= size:
                    break
                starts.append(cut)
        ends = starts[1:] + [size]
        units += [
            Unit(index, i, path, s, e) for i, (s, e) in enumerate(zip(starts, ends, strict=True))
        ]
    return units


def _next_document(f, offset: int) -> int | None:
    """The offset just after the first blank line at or after `offset`, or None."""
    f.seek(offset)
    f.readline()  # finish the line the offset falls in
    while True:
        line = f.readline()
        if not line:
            return None
        if not line.strip():
            return f.tell()


class ReplacementCounter:
    """A codecs error handler that replaces undecodable bytes with U+FFFD and counts them."""

    def __init__(self):
        self.count = 0
        self.name = f"electra_fast_count_{id(self)}"
        codecs.register_error(self.name, self)

    def __call__(self, error: UnicodeDecodeError):
        self.count += error.end - error.start
        return "\ufffd", error.end


def read_lines(unit: Unit, counter: ReplacementCounter) -> Iterator[str]:
    """The unit's lines, decoded as UTF-8 (bad bytes replaced and counted), without newlines."""
    if unit.path.suffix in COMPRESSED:
        stream = COMPRESSED[unit.path.suffix](unit.path, "rb")
    else:
        stream = open(unit.path, "rb")  # noqa: SIM115 (closed by the with below)
        stream.seek(unit.start)
    remaining = None if unit.end is None else unit.end - unit.start
    with stream:
        for line in stream:
            if remaining is not None:
                if remaining <= 0:
                    break
                remaining -= len(line)
            yield line.decode("utf-8", errors=counter.name).rstrip("\r\n")
