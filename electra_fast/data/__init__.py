"""Pretraining data: corpora, ELECTRA's example building, sharded binary datasets. Names are
imported on first use: the data workers need neither torch nor the dataset classes."""

from __future__ import annotations

from electra_fast._lazy import lazy_getattr

_EXPORTS = {
    "Example": "electra_fast.data.examples",
    "ExampleBuilder": "electra_fast.data.examples",
    "PretrainingDataset": "electra_fast.data.dataset",
    "PaddedBatches": "electra_fast.data.dataset",
    "ResumableSampler": "electra_fast.data.dataset",
    "collate_packed": "electra_fast.data.dataset",
    "collate_padded": "electra_fast.data.dataset",
    "prepare": "electra_fast.data.prepare",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
