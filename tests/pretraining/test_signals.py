"""SIGTERM and SIGINT stop a pretraining run cleanly: a checkpoint of the step reached, exit
status 0, and the run resumable. Under torchrun the signal may reach one rank only (here: rank
1 alone), and the ranks still stop after the same step, rank 0 saving."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from electra_fast.pretraining.checkpoint import checkpoints, load_checkpoint
from tests.pretraining.test_trainer import dataset, hparams  # noqa: F401  (fixture)
from tests.torchrun import cpu_environment

LONG = hparams(num_train_steps=100_000, iterations_per_loop=1, save_checkpoints_steps=100_000)


def command(*prefix: str, data: Path, out: Path) -> list[str]:
    return [*prefix, "-m", "electra_fast.cli", "pretrain", "--data", str(data), "--out",
            str(out), "--hparams", json.dumps(LONG.to_dict())]  # fmt: skip


def wait_for_steps(process: subprocess.Popen, out: Path, steps: int) -> None:
    """Until metrics.jsonl has `steps` records (the run is in its loop), or fails the test."""
    deadline = time.time() + 240
    metrics = out / "metrics.jsonl"
    while time.time() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= steps:
            return
        time.sleep(0.2)
    process.kill()
    pytest.fail("the run logged too few steps in 240 s")


def stopped_step(out: Path) -> int:
    """The step of the one checkpoint the stop wrote, checked to load."""
    saved = checkpoints(out / "checkpoints")
    assert len(saved) == 1, saved
    step, path = saved[0]
    assert 3 <= step < LONG.num_train_steps and load_checkpoint(path)["step"] == step
    return step


@pytest.mark.parametrize("sent", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_saves_and_stops_one_process(dataset, tmp_path, sent):  # noqa: F811
    out = tmp_path / "run"
    arguments = command(sys.executable, data=dataset, out=out)
    process = subprocess.Popen(arguments, env=cpu_environment(), stderr=subprocess.PIPE, text=True)
    wait_for_steps(process, out, 3)
    process.send_signal(sent)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    step = stopped_step(out)
    assert f"stopped (resume by rerunning) at step {step}" in stderr


def workers(parent: int) -> dict[int, int]:
    """RANK -> pid of the worker processes that torchrun `parent` started."""
    children = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        children += (task / "children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        variables = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = [v.split(b"=", 1)[1] for v in variables if v.startswith(b"RANK=")]
        if rank:
            ranks[int(rank[0])] = pid
    return ranks


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_a_signal_to_one_rank_stops_both_after_the_same_step(dataset, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-port", "29751")  # fmt: skip
    process = subprocess.Popen(command(*torchrun, data=dataset, out=out), env=cpu_environment(),
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for_steps(process, out, 3)
    ranks = workers(process.pid)
    assert sorted(ranks) == [0, 1], ranks
    os.kill(ranks[1], signal.SIGTERM)  # rank 1 alone: rank 0 learns of it from rank 1
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stderr[-3000:]
    step = stopped_step(out)
    assert f"stopped (resume by rerunning) at step {step}" in stderr
