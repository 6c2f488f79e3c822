"""Two processes under torchrun (gloo on CPU): the run completes, each rank takes half of the
global batch, only rank 0 writes, and the loss falls."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.pretraining.test_trainer import dataset, hparams  # noqa: F401  (fixture)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")
def test_two_gloo_processes(dataset, tmp_path):  # noqa: F811
    settings = hparams(num_train_steps=30, train_batch_size=16, iterations_per_loop=5)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-port", "29731", "-m", "electra_fast.cli", "pretrain",
        "--data", str(dataset), "--out", str(tmp_path / "run"),
        "--hparams", json.dumps(settings.to_dict()),
    ]  # fmt: skip
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    effective = json.loads((tmp_path / "run" / "config.json").read_text())
    assert effective["world_size"] == 2 and effective["per_device_batch_size"] == 8
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 5, 10, 15, 20, 25, 30]  # one writer: rank 0
    assert records[-1]["loss"] < 0.8 * records[0]["loss"]
    assert (tmp_path / "run" / "export" / "discriminator" / "model.safetensors").is_file()
