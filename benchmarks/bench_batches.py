"""Reading a padded pretraining batch (128 x 128 tokens) from a prepared dataset, as the training
loop's host does at every step: `PretrainingDataset.padded_batch` (one gather per shard) against
reading the examples one by one and collating them (`collate_padded`). On a GPU the host has a
few milliseconds per step for everything, so this is host time the device may wait for."""

from pathlib import Path

import pytest
import torch

from benchmarks.conftest import describe
from electra_fast.data import PretrainingDataset, collate_padded, prepare

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
B, L = 128, 128


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    pytest.importorskip("sentencepiece")
    from electra_fast.tokenization.sentencepiece import train_sentencepiece

    root = tmp_path_factory.mktemp("batches")
    text = (SAMPLES / "en.txt").read_text(encoding="utf-8")
    train_sentencepiece([x for x in text.splitlines() if x], root / "tok", vocab_size=2000)
    prepare([str(SAMPLES / "en.txt")], str(root / "tok"), str(root / "data"), max_seq_length=L,
            progress=False)  # fmt: skip
    return PretrainingDataset(root / "data")


@pytest.mark.parametrize("provider", ["electra_fast", "per_example_collate"])
def test_read_batch(benchmark, dataset, provider):
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:B].tolist()
    if provider == "electra_fast":

        def read():
            return dataset.padded_batch(order, L)
    else:

        def read():
            items = [dataset[i] for i in order]
            return collate_padded(items, pad_token_id=dataset.pad_token_id, pad_to=L)

    describe(benchmark, op="read_batch", provider=provider, mode="host",
             size=f"B={B} L={L}", device=torch.device("cpu"))  # fmt: skip
    batch = benchmark(read)
    assert batch["input_ids"].shape == (B, L)
