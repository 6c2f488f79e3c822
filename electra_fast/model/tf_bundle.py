"""Reading TensorFlow checkpoints (the tensor-bundle format that google-research/electra's
TF1 code writes: PREFIX.index and PREFIX.data-NNNNN-of-MMMMM) without TensorFlow.

The .index file is a LevelDB-style sorted table: data blocks of prefix-compressed key/value
entries, an index block pointing at them, and a 48-byte footer. Its first key, "", holds a
BundleHeaderProto; every other key is a variable's name and holds a BundleEntryProto saying
where in which data file its bytes are. Both protobufs are decoded by hand below: they have a
handful of scalar fields.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from electra_fast.model.crc32c import crc32c, unmask

_MAGIC = 0xDB4775248B80FB57
_FOOTER = 48
_TRAILER = 5  # a block's compression type byte and its checksum
# TensorFlow's DataType enum values that checkpoints of these models hold.
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
           9: np.int64, 10: np.bool_, 19: np.float16}  # fmt: skip
_BFLOAT16 = 14


def checkpoint_prefix(path: str | os.PathLike) -> Path:
    """The checkpoint's prefix from the prefix itself, its .index file, or a directory with a
    `checkpoint` file (which names the newest) or a single .index file."""
    path = Path(path)
    if path.is_dir():
        state = path / "checkpoint"
        if state.is_file():
            found = re.search(r'model_checkpoint_path:\s*"([^"]+)"', state.read_text())
            if found:
                # Absolute when written, and often from another machine: look beside it.
                named = path / found.group(1)  # (an absolute path stays as it is)
                if not named.with_name(named.name + ".index").is_file():
                    named = path / named.name
                path = named.with_name(named.name + ".index")
        else:
            indexes = sorted(path.glob("*.index"))
            if len(indexes) != 1:
                raise FileNotFoundError(
                    f"{path} has no 'checkpoint' file and {len(indexes)} .index files; give the "
                    "checkpoint's prefix (such as model.ckpt-1000000)"
                )
            path = indexes[0]
    if path.suffix == ".index":
        path = path.with_suffix("")
    if not path.with_name(path.name + ".index").is_file():
        raise FileNotFoundError(f"no TensorFlow checkpoint at {path} ({path.name}.index)")
    return path


def read_checkpoint(
    path: str | os.PathLike, skip=lambda name: False, verify: bool = True
) -> dict[str, np.ndarray]:
    """Every variable of the checkpoint at `path` (see checkpoint_prefix) whose name `skip`
    does not reject, as numpy arrays (bfloat16 ones as float32). With `verify`, each one's
    bytes are checked against the CRC-32C that TensorFlow stored for them, as TensorFlow's
    own reader does, and so is each block of the index: a damaged or truncated download is an
    error naming the variable or the index."""
    prefix = checkpoint_prefix(path)
    index = prefix.with_name(prefix.name + ".index")
    try:
        entries = dict(_table_entries(index.read_bytes(), verify))
    except ValueError as error:
        raise ValueError(f"{index} is damaged: {error}") from error
    except IndexError as error:  # a varint that runs past its block
        raise ValueError(f"{index} is damaged: a field runs past the end of its block") from error
    header = _fields(entries.pop(b"", b""))
    if header.get(2, 0) != 0:
        raise ValueError(f"{prefix}: a big-endian checkpoint is not supported")
    shards = header.get(1, 1)
    files: dict[int, np.memmap] = {}
    out = {}
    for key, value in entries.items():
        name = key.decode("utf-8")
        if skip(name):
            continue
        entry = _fields(value)
        if 7 in entry:
            raise ValueError(f"{prefix}: variable {name!r} is partitioned, which is not supported")
        shard = entry.get(3, 0)
        if shard not in files:
            data = prefix.with_name(f"{prefix.name}.data-{shard:05d}-of-{shards:05d}")
            if not data.is_file():
                raise FileNotFoundError(f"{data} is missing (variable {name!r} is in it)")
            files[shard] = np.memmap(data, dtype=np.uint8, mode="r")
        out[name] = _array(name, entry, files[shard], verify)
    return out


def _array(name: str, entry: dict, data: np.ndarray, verify: bool) -> np.ndarray:
    dtype = entry.get(1, 0)
    shape_proto = _fields(entry[2][0]) if 2 in entry else {}
    shape = [_fields(dim).get(1, 0) for dim in shape_proto.get(2, [])]
    offset, size = entry.get(4, 0), entry.get(5, 0)
    raw = data[offset : offset + size]
    if verify and 6 in entry and len(raw) == size:  # (a short read is reported below)
        stored, actual = unmask(entry[6]), crc32c(raw)
        if stored != actual:
            raise ValueError(
                f"variable {name!r}: its {size} bytes have CRC-32C {actual:08x} where the "
                f"checkpoint stored {stored:08x}; the data file is damaged (download it again)"
            )
    if dtype == _BFLOAT16:  # the upper halves of float32s
        halves = raw.view(np.uint16).astype(np.uint32) << 16
        array = halves.view(np.float32)
    elif dtype in _DTYPES:
        array = raw.view(_DTYPES[dtype])
    else:
        raise ValueError(f"variable {name!r} has TensorFlow dtype {dtype}, which is not supported")
    count = int(np.prod(shape)) if shape else 1
    if array.size != count or offset + size > data.size:
        raise ValueError(f"variable {name!r}: {size} bytes at {offset} do not hold shape {shape}")
    return np.array(array.reshape(shape))


def _table_entries(table: bytes, verify: bool = True):
    """(key, value) of every entry of a LevelDB-format table (uncompressed blocks). With
    `verify`, each block's bytes are checked against the CRC-32C of its trailer, as
    TensorFlow's reader always does."""
    if len(table) < _FOOTER or int.from_bytes(table[-8:], "little") != _MAGIC:
        raise ValueError("not a TensorFlow checkpoint index (no table footer)")
    footer = table[-_FOOTER:]
    _, at = _varint(footer, 0)  # the metaindex block's offset and size: unused
    _, at = _varint(footer, at)
    index_offset, at = _varint(footer, at)
    index_size, _ = _varint(footer, at)
    for _, handle in _block_entries(table, index_offset, index_size, verify):
        offset, at = _varint(handle, 0)
        size, _ = _varint(handle, at)
        yield from _block_entries(table, offset, size, verify)


def _block_entries(table: bytes, offset: int, size: int, verify: bool):
    if offset + size + _TRAILER > len(table):
        raise ValueError(f"a block of {size} bytes at {offset} runs past the end of the file")
    block = table[offset : offset + size]
    if verify:  # the checksum covers the block and its type byte
        stored = int.from_bytes(table[offset + size + 1 : offset + size + _TRAILER], "little")
        if unmask(stored) != crc32c(table[offset : offset + size + 1]):
            raise ValueError(f"the block of {size} bytes at {offset} fails its checksum")
    if table[offset + size] != 0:
        raise ValueError("a compressed checkpoint index block is not supported")
    restarts = int.from_bytes(block[-4:], "little")
    end = len(block) - 4 - 4 * restarts
    at, key = 0, b""
    while at < end:
        shared, at = _varint(block, at)
        unshared, at = _varint(block, at)
        length, at = _varint(block, at)
        key = key[:shared] + block[at : at + unshared]
        at += unshared
        yield key, block[at : at + length]
        at += length


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _fields(message: bytes) -> dict:
    """A protobuf message's fields by number: varints as ints, fixed32 as ints, nested
    messages as bytes, except that field 2 (a repeated dimension, or the shape holding them)
    is collected as a list of nested dicts or bytes."""
    fields: dict = {}
    at = 0
    while at < len(message):
        tag, at = _varint(message, at)
        number, kind = tag >> 3, tag & 7
        if kind == 0:
            value, at = _varint(message, at)
        elif kind == 5:
            value, at = int.from_bytes(message[at : at + 4], "little"), at + 4
        elif kind == 1:
            value, at = int.from_bytes(message[at : at + 8], "little"), at + 8
        elif kind == 2:
            length, at = _varint(message, at)
            value, at = message[at : at + length], at + length
        else:
            raise ValueError(f"unexpected protobuf wire type {kind}")
        if kind == 2 and number in (2, 7):
            fields.setdefault(number, []).append(value)
        else:
            fields[number] = value
    return fields
