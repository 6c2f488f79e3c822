"""Reading a prepared dataset: memory-mapped shards, padded or packed batches, and a sampler
that shards by rank and resumes where it stopped."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from electra_fast.data.shards import MANIFEST, open_shard


class PretrainingDataset(torch.utils.data.Dataset):
    """The examples of a `prepare` output directory; item i is a dict of 1-D int64 tensors
    `input_ids` and `token_type_ids` (unpadded)."""

    def __init__(self, directory: str | os.PathLike, tokenizer=None):
        self.directory = Path(directory)
        path = self.directory / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{self.directory} is not a prepared dataset (no {MANIFEST})")
        self.manifest = json.loads(path.read_text())
        if tokenizer is not None:
            if isinstance(tokenizer, (str, os.PathLike)):
                from electra_fast import tokenization

                tokenizer = tokenization.load(tokenizer)
            if tokenizer.checksum() != self.manifest["tokenizer_checksum"]:
                raise ValueError(
                    f"{self.directory} was prepared with another tokenizer "
                    f"({self.manifest['tokenizer']}) than the one given"
                )
        self.max_seq_length = self.manifest["max_seq_length"]
        self.pad_token_id = self.manifest["pad_token_id"]
        self.vocab_size = self.manifest["vocab_size"]
        shards = self.directory / "shards"
        self._shards = [open_shard(shards, s["name"]) for s in self.manifest["shards"]]
        counts = [len(index) - 1 for _, index in self._shards]
        self._ends = np.cumsum(counts)

    def fingerprint(self) -> str:
        """What makes two copies of the dataset the same examples wherever they lie (the
        manifest without its paths, hashed), as a short string: compared between the machines
        of a run."""
        keys = ("tokenizer_checksum", "vocab_size", "max_seq_length", "seed", "counts", "shards")
        settings = json.dumps({key: self.manifest.get(key) for key in keys}, sort_keys=True)
        digest = hashlib.sha256(settings.encode()).hexdigest()[:16]
        return f"{len(self)} examples, vocabulary {self.vocab_size}, manifest {digest}"

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} examples")
        i %= len(self)
        shard = int(np.searchsorted(self._ends, i, side="right"))
        local = i - (int(self._ends[shard - 1]) if shard else 0)
        ids, index = self._shards[shard]
        start, first_length = (int(v) for v in index[local])
        end = int(index[local + 1, 0])
        input_ids = torch.from_numpy(ids[start:end].astype(np.int64))
        token_type_ids = torch.zeros_like(input_ids)
        token_type_ids[first_length:] = 1
        return {"input_ids": input_ids, "token_type_ids": token_type_ids}

    def padded_batch(self, indices, pad_to: int | None = None) -> dict[str, torch.Tensor]:
        """collate_padded([self[i] for i in indices], self.pad_token_id, pad_to), read with one
        gather per shard instead of Python steps per example: a batch of 128 x 128 tokens takes
        the training loop's host a fraction of a millisecond instead of about two."""
        rows = np.asarray(indices, dtype=np.int64)
        if rows.ndim != 1 or len(rows) == 0:
            raise ValueError(f"indices must be a non-empty list of ints, got {indices!r}")
        n = len(self)
        outside = (rows < -n) | (rows >= n)
        if outside.any():
            raise IndexError(f"index {int(rows[outside][0])} out of range for {n} examples")
        rows %= n
        shard = np.searchsorted(self._ends, rows, side="right")
        local = rows - np.where(shard > 0, self._ends[shard - 1], 0)
        used = np.unique(shard)
        start, first, end = (np.empty(len(rows), np.int64) for _ in range(3))
        for s in used:
            mine = shard == s
            index = self._shards[s][1]
            start[mine], first[mine] = index[local[mine]].T
            end[mine] = index[local[mine] + 1, 0]
        length = end - start
        width = int(length.max())
        if pad_to is not None:
            if pad_to < width:
                raise ValueError(f"pad_to={pad_to} is shorter than an example of {width} tokens")
            width = pad_to
        column = np.arange(width)
        real = column < length[:, None]
        input_ids = np.full((len(rows), width), self.pad_token_id, np.int64)
        for s in used:  # a second pass: the width is known only after the first
            ids = self._shards[s][0]
            mine = np.flatnonzero(shard == s)
            where = start[mine, None] + column  # past an example's end: clipped, then padded
            tokens = ids[np.minimum(where, len(ids) - 1)]
            input_ids[mine] = np.where(real[mine], tokens, self.pad_token_id)
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(real.astype(np.int64)),
            "token_type_ids": torch.from_numpy(
                (real & (column >= first[:, None])).astype(np.int64)
            ),
        }


class PaddedBatches(torch.utils.data.Dataset):
    """A dataset's padded batches, one per list of indices (`dataset.padded_batch`). Given a
    BatchSampler as its sampler and batch_size=None, a DataLoader reads each batch in one call."""

    def __init__(self, dataset: PretrainingDataset, pad_to: int | None = None):
        self.dataset, self.pad_to = dataset, pad_to

    def __getitem__(self, indices) -> dict[str, torch.Tensor]:
        return self.dataset.padded_batch(indices, self.pad_to)


def collate_padded(batch: list[dict], pad_token_id: int = 0, pad_to: int | None = None) -> dict:
    """[B, L] input_ids, attention_mask and token_type_ids, right-padded to the longest example
    (or to `pad_to`, for fixed shapes)."""
    length = max(len(item["input_ids"]) for item in batch)
    if pad_to is not None:
        if pad_to < length:
            raise ValueError(f"pad_to={pad_to} is shorter than an example of {length} tokens")
        length = pad_to
    out = {
        "input_ids": torch.full((len(batch), length), pad_token_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(batch), length), dtype=torch.long),
        "token_type_ids": torch.zeros((len(batch), length), dtype=torch.long),
    }
    for row, item in enumerate(batch):
        n = len(item["input_ids"])
        out["input_ids"][row, :n] = item["input_ids"]
        out["attention_mask"][row, :n] = 1
        out["token_type_ids"][row, :n] = item["token_type_ids"]
    return out


def collate_packed(batch: list[dict]) -> dict:
    """The examples concatenated: input_ids and token_type_ids [T], cu_seqlens [B + 1] int32,
    max_seqlen."""
    lengths = torch.tensor([len(item["input_ids"]) for item in batch])
    return {
        "input_ids": torch.cat([item["input_ids"] for item in batch]),
        "token_type_ids": torch.cat([item["token_type_ids"] for item in batch]),
        "cu_seqlens": torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).int(),
        "max_seqlen": int(lengths.max()),
    }


class ResumableSampler(torch.utils.data.Sampler):
    """Indices of one rank's share of each epoch, from a saved position on. The epoch's
    permutation (drawn from seed + epoch) is cut into global batches of batch_size x
    world_size; rank r takes the r-th block of batch_size of each (so its rows are rows
    r * batch_size ... of the global batch), the tail dropped so that every rank gets as many.
    A DataLoader's workers read ahead of the training loop, so the loop says how many indices
    of the current pass it has used: `state_dict(consumed)`."""

    def __init__(self, length: int, *, shuffle=True, seed=0, rank=0, world_size=1, batch_size=1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.length, self.shuffle, self.seed = length, shuffle, seed
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.share = length // (world_size * batch_size) * batch_size
        self.epoch, self.start = 0, 0
        self._pass = (0, 0)  # (epoch, start) of the pass being iterated

    def __len__(self) -> int:
        return self.share - self.start

    def __iter__(self):
        epoch, start = self._pass = (self.epoch, self.start)
        if self.shuffle:
            order = torch.randperm(
                self.length, generator=torch.Generator().manual_seed(self.seed + epoch)
            )
        else:
            order = torch.arange(self.length)
        blocks = order[: self.share * self.world_size].view(-1, self.world_size, self.batch_size)
        mine = blocks[:, self.rank].flatten()
        self.epoch, self.start = epoch + 1, 0  # where the next pass begins
        yield from mine[start:].tolist()

    def state_dict(self, consumed: int) -> dict:
        """Where to resume after the loop used `consumed` indices of the current pass."""
        epoch, start = self._pass
        position = start + consumed
        if position >= self.share:
            epoch, position = epoch + 1, 0
        return {"epoch": epoch, "position": position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"the saved sampler used seed {state['seed']}, this one {self.seed}")
        self.epoch, self.start = int(state["epoch"]), int(state["position"])
