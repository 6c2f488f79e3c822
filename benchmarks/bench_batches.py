"""Reading a padded pretraining batch (128 x 128 tokens) from a prepared dataset, as the training
loop's host does at every step: `PretrainingDataset.padded_batch` (one gather per shard) against
reading the examples one by one and collating them (`collate_padded`). On a GPU the host has a
few milliseconds per step for everything, so this is host time the device may wait for."""

import pytest
import torch

from benchmarks.conftest import describe
from electra_fast.data import PretrainingDataset, collate_padded
from tests.samples import prepare_en_sample

B, L = 128, 128


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("batches")
    return PretrainingDataset(prepare_en_sample(root, vocab_size=2000, max_seq_length=L))


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
