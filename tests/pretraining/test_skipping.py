"""SkipCounter: the skip flag and the counts against a hand-kept tally, the stop after too many
skipped steps in a row, one decision for all ranks (which steps to skip, and at which step to
stop, also when the look is late as on a GPU), and on a GPU the late, non-blocking look."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from electra_fast.pretraining.skipping import NonFiniteLoss, SkipCounter
from tests.gloo import run_ranks

INF, NAN = math.inf, math.nan


def test_flags_and_counts_follow_a_hand_kept_tally():
    counter = SkipCounter(torch.device("cpu"), limit=10, skipped=2)  # resumed: 2 skipped before
    steps = [(1.0, 0.5), (NAN, 0.5), (1.0, INF), (1.0, 2.0), (INF, 1.0), (1.0, NAN), (NAN, NAN)]
    total, in_a_row, longest = 2, 0, 0
    for loss, norm in steps:
        bad = not (math.isfinite(loss) and math.isfinite(norm))
        total, in_a_row = total + bad, in_a_row + 1 if bad else 0
        longest = max(longest, in_a_row)
        flag = counter.flag(torch.tensor(loss), torch.tensor(norm))
        assert flag.dtype == torch.float32 and flag.shape == () and float(flag) == bad
        assert counter.counts.tolist() == [total, in_a_row, longest]
    assert counter.check(step=7) == total == 7


def test_a_limit_below_one_is_refused():
    # A limit of 0 would stop a run at its first check, finite losses and all.
    with pytest.raises(ValueError, match="max_consecutive_nonfinite\\) must be positive, got 0"):
        SkipCounter(torch.device("cpu"), limit=0)


def test_too_many_in_a_row_stop_at_the_step_that_reaches_the_limit():
    counter = SkipCounter(torch.device("cpu"), limit=3, where="Checkpoints in /run.")
    for step, loss in enumerate([NAN, NAN, 1.0, NAN, NAN], start=1):
        counter.flag(torch.tensor(loss), torch.tensor(1.0))
        counter.poll(step)  # on the CPU the look is immediate
    counter.flag(torch.tensor(NAN), torch.tensor(1.0))
    with pytest.raises(NonFiniteLoss, match=r"3 steps in a row.*step 6.*=3\).*/run\."):
        counter.poll(6)


def _flag_on_rank(rank: int, init: str, results) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        counter = SkipCounter(torch.device("cpu"), limit=5)
        losses = [(1.0, 1.0), (1.0, NAN), (1.0, 1.0)]  # rank 1's loss is NaN at step 2
        flags = [
            float(counter.flag(torch.tensor(pair[rank]), torch.tensor(0.5))) for pair in losses
        ]
        results.put((rank, flags, counter.check(3)))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch without distributed")
def test_every_rank_skips_when_one_ranks_loss_is_not_finite(tmp_path):
    context = mp.get_context("spawn")
    results = context.Queue()
    init = f"file://{os.path.join(tmp_path, 'store')}"
    mp.start_processes(_flag_on_rank, args=(init, results), nprocs=2, start_method="spawn")
    got = dict((rank, (flags, skipped)) for rank, flags, skipped in (results.get() for _ in "ab"))
    assert got == {0: ([0.0, 1.0, 0.0], 1), 1: ([0.0, 1.0, 0.0], 1)}


def stop_step(rank, world, root, nan_steps, lag):
    """The step at which the run stops, only rank 1's loss being NaN at `nan_steps`."""
    counter = SkipCounter(torch.device("cpu"), limit=2, lag=lag)
    for step in range(1, 12):
        loss = NAN if rank == 1 and step in nan_steps else 1.0
        counter.flag(torch.tensor(loss), torch.tensor(1.0))
        try:
            counter.poll(step)
        except NonFiniteLoss as stop:
            return [step, str(stop)]
    return None


@pytest.mark.parametrize("lag", [0, 2])
def test_every_rank_stops_at_the_same_step_lag_steps_after_the_limit(tmp_path, lag):
    # On a GPU the look is 2 steps late; a look at whatever had arrived by then would let the
    # ranks stop at different steps, one then waiting for the other in its next collective.
    results = run_ranks(stop_step, tmp_path, [2, 4, 5], lag)
    message = "2 steps in a row had a non-finite loss or gradient (seen at step"
    assert results == [{"result": [5 + lag, f"{message} {5 + lag}; max_consecutive_nonfinite=2);"
                                             " stopping. "]}] * 2  # fmt: skip
    assert run_ranks(stop_step, tmp_path / "never", [2, 4], lag) == [{"result": None}] * 2


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_look_is_two_steps_late():
    counter = SkipCounter(torch.device("cuda"), limit=2)
    for step in range(1, 4):
        counter.flag(torch.tensor(NAN, device="cuda"), torch.tensor(1.0, device="cuda"))
        counter.poll(step)  # at step 3 the counts of step 1: one skipped step
    counter.flag(torch.tensor(1.0, device="cuda"), torch.tensor(1.0, device="cuda"))
    with pytest.raises(NonFiniteLoss, match="2 steps in a row.*step 4"):
        counter.poll(4)  # the counts of step 2
    assert counter.skipped() == 3
    with pytest.raises(NonFiniteLoss, match="3 steps in a row.*step 4"):
        counter.check(4)
