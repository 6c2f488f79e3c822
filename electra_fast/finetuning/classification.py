"""Sentence and sentence-pair classification and regression (GLUE-style tasks): reading
JSON Lines, CSV or TSV files, and encoding [CLS] a [SEP] (b [SEP]) as the official
finetune/classification does, the longer text trimmed first when a pair is too long."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from electra_fast.data.dataset import collate_padded


@dataclass
class ClassificationExample:
    text: str
    text_pair: str | None
    label: str | float | None


def read_examples(
    path: str | os.PathLike,
    *,
    text_field: str = "text",
    pair_field: str | None = None,
    label_field: str = "label",
) -> list[ClassificationExample]:
    """Rows of a .jsonl (one JSON object per line), .csv or .tsv file (a header names the
    columns). A row without `label_field` is unlabelled (label None)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{path}:{number}: not JSON: {error}") from None
    elif path.suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8", newline="") as f:
            delimiter = "\t" if path.suffix == ".tsv" else ","
            rows = list(csv.DictReader(f, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL))
    else:
        raise ValueError(f"{path}: expected a .jsonl, .csv or .tsv file")
    examples = []
    for number, row in enumerate(rows, 1):
        for name in (text_field, pair_field):
            if name is not None and not isinstance(row.get(name), str):
                raise ValueError(f"{path}: row {number} has no text field {name!r}")
        label = row.get(label_field)
        examples.append(ClassificationExample(row[text_field], row.get(pair_field), label))
    return examples


def label_vocabulary(examples: list[ClassificationExample]) -> list[str]:
    """The training set's labels, sorted (numerically when they all are numbers)."""
    labels = {str(e.label) for e in examples if e.label is not None}
    if not labels:
        raise ValueError("the training examples have no labels")
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


def encode(
    examples: list[ClassificationExample], tokenizer, max_seq_length: int
) -> list[tuple[list[int], list[int]]]:
    """(input_ids, token_type_ids) of each example: [CLS] a [SEP] or [CLS] a [SEP] b [SEP], at
    most max_seq_length tokens, a pair trimmed one token at a time from the longer text."""
    if max_seq_length < 3:
        raise ValueError(f"max_seq_length must be at least 3, got {max_seq_length}")
    firsts = tokenizer.encode_batch([e.text for e in examples])
    paired = [e for e in examples if e.text_pair is not None]
    seconds = iter(tokenizer.encode_batch([e.text_pair for e in paired]))
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    encoded = []
    for example, a in zip(examples, firsts, strict=True):
        if example.text_pair is None:
            a = a[: max_seq_length - 2]
            encoded.append(([cls, *a, sep], [0] * (len(a) + 2)))
            continue
        b = next(seconds)
        cut_a, cut_b = _trim_pair(len(a), len(b), max_seq_length - 3)
        a, b = a[:cut_a], b[:cut_b]
        encoded.append(([cls, *a, sep, *b, sep], [0] * (len(a) + 2) + [1] * (len(b) + 1)))
    return encoded


def _trim_pair(len_a: int, len_b: int, room: int) -> tuple[int, int]:
    # The official loop pops the last token of the longer text (b on a tie) until both fit;
    # this is its closed form.
    if len_a + len_b <= room:
        return len_a, len_b
    short = min(len_a, len_b)
    if short <= room // 2:
        return (len_a, room - len_a) if len_a == short else (room - len_b, len_b)
    return room - room // 2, room // 2  # both trimmed: the tie rule leaves a the extra one


def collate(
    rows: list[tuple[list[int], list[int]]], labels: torch.Tensor | None, pad_id: int
) -> dict[str, torch.Tensor]:
    batch = collate_padded(
        [{"input_ids": torch.tensor(ids), "token_type_ids": torch.tensor(types)}
         for ids, types in rows], pad_id)  # fmt: skip
    if labels is not None:
        batch["labels"] = labels
    return batch
