"""SkipCounter: the skip flag and the counts against a hand-kept tally, the stop after too many
skipped steps in a row, one decision for all ranks, and on a GPU the late, non-blocking look."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from electra_fast.pretraining.skipping import NonFiniteLoss, SkipCounter

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


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_look_is_late_but_comes():
    counter = SkipCounter(torch.device("cuda"), limit=2)
    for _ in range(2):
        counter.flag(torch.tensor(NAN, device="cuda"), torch.tensor(1.0, device="cuda"))
    counter.poll(2)  # sends the counts on their way; nothing on the host yet
    torch.cuda.synchronize()
    with pytest.raises(NonFiniteLoss, match="2 steps in a row"):
        counter.poll(3)
    with pytest.raises(NonFiniteLoss, match="2 steps in a row"):
        counter.check(3)
