"""Pretraining data: corpora, ELECTRA's example building, sharded binary datasets."""

from electra_fast.data.dataset import (
    PretrainingDataset,
    ResumableSampler,
    collate_packed,
    collate_padded,
)
from electra_fast.data.examples import Example, ExampleBuilder
from electra_fast.data.prepare import prepare

__all__ = [
    "Example",
    "ExampleBuilder",
    "PretrainingDataset",
    "ResumableSampler",
    "collate_packed",
    "collate_padded",
    "prepare",
]
