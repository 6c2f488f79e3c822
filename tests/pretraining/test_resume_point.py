"""Where a run of two processes (gloo) resumes when the ranks see different checkpoint
directories, as machines without a shared filesystem do: rank 0's choice holds on every rank,
and a rank that cannot read rank 0's file stops both ranks with the same error instead of
resuming elsewhere (or waiting forever)."""

import pytest

from electra_fast.pretraining import checkpoint as checkpoints
from tests.gloo import run_ranks


def saved(step: int) -> dict:
    return {"step": step, "model": {}, "config": {}}


def write(directory, steps, damaged=()):
    for step in steps:
        checkpoints.save_checkpoint(directory, step, saved(step), keep=10)
    for step in damaged:
        (directory / f"step-{step:08d}.pt").write_bytes(b"cut short")
    directory.mkdir(parents=True, exist_ok=True)


def resume_on_rank(rank, world, root, resume):
    """One rank's resume point over its own view of the checkpoints (root/rank<r>)."""
    found = checkpoints.resume_point(root / f"rank{rank}", resume, rank, world)
    return {"step": found[0]["step"] if found else None, "file": found[1].name if found else None}


def outcomes(root, resume=True):
    return run_ranks(resume_on_rank, root, resume)


def test_every_rank_loads_rank_0s_newest(tmp_path):
    write(tmp_path / "rank0", [2, 4])
    write(tmp_path / "rank1", [2, 4, 6])  # a newer file than rank 0's: not rank 0's choice
    assert outcomes(tmp_path) == [{"result": {"step": 4, "file": "step-00000004.pt"}}] * 2


def test_no_checkpoint_on_rank_0_starts_every_rank_afresh(tmp_path):
    write(tmp_path / "rank0", [])
    write(tmp_path / "rank1", [2])  # stale: rank 0 will write its own
    assert outcomes(tmp_path) == [{"result": {"step": None, "file": None}}] * 2


@pytest.mark.parametrize(
    ("rank1_steps", "damaged", "reason"),
    [([], (), "is not a file"), ([2], (), "is not a file"), ([4], (4,), "not a readable")],
    ids=["none", "older only", "damaged copy"],
)
def test_a_rank_without_rank_0s_file_stops_every_rank(tmp_path, rank1_steps, damaged, reason):
    write(tmp_path / "rank0", [2, 4])
    write(tmp_path / "rank1", rank1_steps, damaged)
    for result in outcomes(tmp_path):  # each rank names its own --out (the same in a real run)
        assert result["error"] == "RuntimeError", result
        message = result["message"]
        assert "/step-00000004.pt, which rank(s) [1] cannot read" in message, message
        assert reason in message and "filesystem they all share" in message


def test_no_resume_refuses_on_every_rank_when_rank_0_has_checkpoints(tmp_path):
    write(tmp_path / "rank0", [2])
    write(tmp_path / "rank1", [])
    results = outcomes(tmp_path, resume=False)
    assert [r["error"] for r in results] == ["ValueError"] * 2
    assert all("--no-resume was given" in r["message"] for r in results)
