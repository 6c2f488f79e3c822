"""The on-disk dataset: per unit of input, `NAME.ids.npy` (every example's tokens, concatenated,
uint16 below 65,536 ids, else int32), `NAME.index.npy` (int64 [n + 1, 2]: each example's start
offset, and the length of its [CLS] A [SEP] part) and `NAME.json` (counts; written last, so its
presence means the shard is whole). `manifest.json` lists the shards and what made them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from electra_fast._files import atomic_path, write_atomically
from electra_fast.data.examples import Example

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size < 65536 else np.int32


def write_shard(directory: Path, name: str, examples: list[Example], vocab_size: int, stats: dict):
    """Writes the shard's arrays through temporary files and renames, then its stats file."""
    lengths = np.array([len(e.input_ids) for e in examples], dtype=np.int64)
    index = np.zeros((len(examples) + 1, 2), dtype=np.int64)
    index[1:, 0] = np.cumsum(lengths)
    index[:-1, 1] = [e.first_length for e in examples]
    ids = np.fromiter(
        (t for e in examples for t in e.input_ids),
        dtype=token_dtype(vocab_size),
        count=int(index[-1, 0]),
    )
    for suffix, array in (("ids", ids), ("index", index)):
        # Through a file object: given a path, np.save would append ".npy" to the temporary name.
        with atomic_path(directory / f"{name}.{suffix}.npy") as temporary:
            with open(temporary, "wb") as f:
                np.save(f, array)
    write_json(directory / f"{name}.json", {**stats, "examples": len(examples), "tokens": len(ids)})


def write_json(path: Path, data: dict) -> None:
    write_atomically(path, json.dumps(data, indent=1) + "\n")


def shard_done(directory: Path, name: str) -> bool:
    return (directory / f"{name}.json").is_file()


def open_shard(directory: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids, index), memory-mapped; a shard that is missing, cut short or whose two arrays
    disagree is an error that names it (its examples would otherwise be read wrong)."""
    try:
        ids = np.load(directory / f"{name}.ids.npy", mmap_mode="r")
        index = np.load(directory / f"{name}.index.npy", mmap_mode="r")
    except (ValueError, OSError) as error:  # numpy: "mmap length is greater than file size"
        raise ValueError(
            f"shard {directory / name} is damaged ({error}): delete {name}.json beside it and "
            "run prepare again, which redoes that shard"
        ) from error
    if index.ndim != 2 or index.shape[1:] != (2,) or len(index) < 1:
        raise ValueError(f"shard {directory / name}: its index has shape {index.shape}")
    if ids.ndim != 1 or int(index[-1, 0]) != len(ids):
        raise ValueError(
            f"shard {directory / name}: the index ends at token {int(index[-1, 0])} but the "
            f"shard holds {len(ids)} tokens"
        )
    return ids, index
