"""Two processes under torchrun (gloo on CPU): the run completes, each rank takes half of the
global batch, only rank 0 writes, and the loss falls."""

import json

import pytest
import torch

from tests.pretraining.test_trainer import TINY, dataset, hparams  # noqa: F401  (fixture)
from tests.torchrun import torchrun_cli


def torchrun(data, out, settings, port):
    """electra-fast pretrain under torchrun with 2 CPU processes (gloo)."""
    torchrun_cli(port, "pretrain", "--data", str(data), "--out", str(out),
                 "--hparams", json.dumps(settings.to_dict()))  # fmt: skip


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")
def test_two_gloo_processes(dataset, tmp_path):  # noqa: F811
    settings = hparams(num_train_steps=30, train_batch_size=16, iterations_per_loop=5)
    torchrun(dataset, tmp_path / "run", settings, 29731)
    effective = json.loads((tmp_path / "run" / "config.json").read_text())
    assert effective["world_size"] == 2 and effective["per_device_batch_size"] == 8
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 5, 10, 15, 20, 25, 30]  # one writer: rank 0
    assert records[-1]["loss"] < 0.8 * records[0]["loss"]
    assert (tmp_path / "run" / "export" / "discriminator" / "model.safetensors").is_file()


def test_two_processes_end_where_one_process_does(dataset, tmp_path):  # noqa: F811
    """Same global batch, dropout off: the ranks mask and sample their rows as one process
    would, and the losses are normalised by global counts, so the parameters agree (up to
    floating-point summation order)."""
    from electra_fast.pretraining.trainer import pretrain

    settings = hparams(
        num_train_steps=6, train_batch_size=16, iterations_per_loop=1,
        model_hparam_overrides={**TINY, "hidden_dropout_prob": 0.0,
                                "attention_probs_dropout_prob": 0.0},
    )  # fmt: skip
    pretrain(dataset, tmp_path / "one", settings, progress=False)
    torchrun(dataset, tmp_path / "two", settings, 29733)
    one = torch.load(tmp_path / "one/checkpoints/step-00000006.pt", weights_only=False)
    two = torch.load(tmp_path / "two/checkpoints/step-00000006.pt", weights_only=False)
    for name, tensor in one["model"].items():
        torch.testing.assert_close(two["model"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
