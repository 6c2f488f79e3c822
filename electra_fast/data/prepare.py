"""`electra-fast prepare`: text → tokenised ELECTRA examples in sharded binary files.

Every unit of input (a plain file's ~4 MB slice cut at a blank line, or a compressed file)
becomes one shard, built with its own random stream seeded from (seed, file, unit). So the
same input, tokenizer and seed give byte-identical shards whatever the number of processes,
and a rerun skips the shards that are already whole.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from electra_fast import tokenization
from electra_fast.data.corpus import (
    UNIT_BYTES,
    ReplacementCounter,
    Unit,
    expand_inputs,
    read_lines,
    split_units,
)
from electra_fast.data.examples import ExampleBuilder, clean_line
from electra_fast.data.shards import FORMAT_VERSION, MANIFEST, shard_done, write_json, write_shard

_worker_tokenizer = None
# Lines tokenised per call: every tokenizer's encode_batch runs its loop in native code (the
# Vietnamese segmenter makes one str per line instead of one per word), which one call per line
# would give up. The examples are the same: encode_batch(lines) is [encode(l) for l in lines].
ENCODE_CHUNK = 256


def prepare(
    inputs: Iterable[str],
    tokenizer_dir: str,
    out: str,
    *,
    max_seq_length: int = 128,
    num_processes: int = 1,
    seed: int = 0,
    unit_bytes: int = UNIT_BYTES,
    progress: bool = True,
) -> dict:
    """Prepares a dataset directory; returns its manifest."""
    if max_seq_length < 5:
        raise ValueError(f"max_seq_length must be at least 5, got {max_seq_length}")
    if num_processes < 1:
        raise ValueError(f"num_processes must be at least 1, got {num_processes}")
    files = expand_inputs(inputs)
    units = split_units(files, unit_bytes)
    tokenizer = tokenization.load(tokenizer_dir)
    out_dir = Path(out)
    shards = out_dir / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    settings = {
        "format_version": FORMAT_VERSION,
        "tokenizer": str(Path(tokenizer_dir).resolve()),
        "tokenizer_checksum": tokenizer.checksum(),
        "vocab_size": tokenizer.vocab_size,
        "pad_token_id": tokenizer.pad_token_id,
        "special_token_ids": {
            name: getattr(tokenizer, f"{name}_token_id")
            for name in ("pad", "unk", "cls", "sep", "mask")
        },
        "max_seq_length": max_seq_length,
        "seed": seed,
        "inputs": [str(f) for f in files],
    }
    _check_previous(out_dir, settings)
    write_json(out_dir / "settings.json", settings)  # what the shards were made with

    todo = [u for u in units if not shard_done(shards, u.name)]
    started = time.time()
    arguments = [(u, str(shards), max_seq_length, seed) for u in todo]
    done_bytes, total_bytes = 0, sum(_unit_bytes(u) for u in todo)
    if num_processes == 1 or len(todo) <= 1:
        _init_worker(tokenizer_dir)
        pool, results = None, map(_prepare_unit, arguments)
    else:
        # Spawned workers inherit no state, so a unit's shard is the same in any count; an
        # executor (not a Pool) fails loudly if a worker dies instead of waiting forever.
        pool = ProcessPoolExecutor(
            num_processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(tokenizer_dir, True),
        )
        results = (
            f.result() for f in as_completed([pool.submit(_prepare_unit, a) for a in arguments])
        )
    try:
        for count, unit_bytes_done in enumerate(results, 1):
            done_bytes += unit_bytes_done
            if progress:
                _progress(count, len(todo), done_bytes, total_bytes, started)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    manifest = _manifest(shards, units, settings)
    if manifest["counts"]["examples"] == 0:  # a dataset no run could take a batch from
        if progress:
            print(file=sys.stderr)  # the error on a line of its own, not after the bar
        raise ValueError(f"no examples: the {len(files)} input file(s) hold no text")
    write_json(out_dir / MANIFEST, manifest)
    if progress:
        elapsed = max(time.time() - started, 1e-9)
        counts = manifest["counts"]
        print(
            f"\nprepared {counts['documents']} documents, {counts['sentences']} sentences, "
            f"{counts['examples']} examples, {counts['tokens']} tokens from "
            f"{len(files)} files in {elapsed:.1f} s ({total_bytes / elapsed / 2**20:.1f} MB/s); "
            f"{counts['replaced_bytes']} invalid UTF-8 bytes replaced → {out_dir}",
            file=sys.stderr,
        )
    return manifest


def _check_previous(out_dir: Path, settings: dict) -> None:
    previous = out_dir / "settings.json"
    if previous.is_file():
        old = json.loads(previous.read_text())
        changed = [k for k in settings if k != "tokenizer" and old.get(k) != settings[k]]
        if changed:
            raise ValueError(
                f"{out_dir} holds a dataset prepared with other settings ({', '.join(changed)}); "
                "choose another --out, or delete it"
            )


def _init_worker(tokenizer_dir: str, one_of_many: bool = False) -> None:
    global _worker_tokenizer
    if one_of_many:  # the processes share the cores: no thread pool of all of them in each
        os.environ.setdefault("RAYON_NUM_THREADS", "1")  # Hugging Face tokenizers (WordPiece)
    _worker_tokenizer = tokenization.load(tokenizer_dir)


def _unit_bytes(unit: Unit) -> int:
    return (unit.end - unit.start) if unit.end is not None else unit.path.stat().st_size


def _prepare_unit(arguments) -> int:
    unit, shards, max_seq_length, seed = arguments
    tokenizer = _worker_tokenizer
    rng = random.Random(f"{seed}/{unit.file_index}/{unit.unit_index}")
    builder = ExampleBuilder(
        tokenizer.encode, max_seq_length, tokenizer.cls_token_id, tokenizer.sep_token_id, rng
    )
    counter = ReplacementCounter()
    examples, documents, sentences, in_document = [], 0, 0, False
    lines = read_lines(unit, counter)
    while chunk := list(itertools.islice(lines, ENCODE_CHUNK)):
        chunk = [clean_line(line) for line in chunk]
        encoded = iter(tokenizer.encode_batch([line for line in chunk if line]))
        for line in chunk:
            if line:
                sentences += 1
                documents += not in_document
                in_document = True
            else:
                in_document = False
            example = builder.add_encoded(next(encoded) if line else None)
            if example is not None:
                examples.append(example)
    last = builder.flush()
    if last is not None:
        examples.append(last)
    stats = {"documents": documents, "sentences": sentences, "replaced_bytes": counter.count}
    write_shard(Path(shards), unit.name, examples, tokenizer.vocab_size, stats)
    return _unit_bytes(unit)


def _manifest(shards: Path, units: list[Unit], settings: dict) -> dict:
    counts = dict.fromkeys(("documents", "sentences", "examples", "tokens", "replaced_bytes"), 0)
    listed = []
    for unit in units:
        stats = json.loads((shards / f"{unit.name}.json").read_text())
        for key in counts:
            counts[key] += stats[key]
        listed.append({"name": unit.name, "examples": stats["examples"]})
    return {**settings, "counts": counts, "shards": listed}


def _progress(done: int, total: int, done_bytes: int, total_bytes: int, started: float) -> None:
    elapsed = max(time.time() - started, 1e-9)
    rate = done_bytes / elapsed
    eta = (total_bytes - done_bytes) / rate if rate > 0 else 0
    width = 30
    filled = int(width * done_bytes / max(total_bytes, 1))
    print(
        f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} units, "
        f"{rate / 2**20:.1f} MB/s, ETA {eta:.0f} s",
        end="",
        file=sys.stderr,
        flush=True,
    )
