"""Skipping the steps whose loss or gradient is not finite, without the host waiting for the
device at every step.

Reading a GPU value on the host (`bool(torch.isfinite(loss))`) waits until the device has
finished everything queued so far; the device then idles while the host queues the next step's
kernels. So the decision stays on the device: `SkipCounter.flag` makes the 0-d flag that the
optimiser's `step(found_inf=...)` obeys, and updates the counts there. The host learns them
late: `poll`, at every step, reads the counts of a fixed number of steps before (on a GPU two,
long arrived: it never waits), so that every rank stops at the same step; `check` reads them at
once where the loop synchronises anyway (checkpoints, the end). A skipped step still counts as
a step: the schedule and the data move on, as with torch's loss scaler.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from electra_fast.distributed import LateReads


class NonFiniteLoss(RuntimeError):
    pass


class SkipCounter:
    """The steps skipped so far, the current run of skipped steps and the longest such run, on
    the device; more than `limit - 1` in a row stop the run (`NonFiniteLoss`)."""

    def __init__(self, device: torch.device, limit: int, skipped: int = 0, where: str = "",
                 lag: int | None = None):  # fmt: skip
        if limit < 1:
            raise ValueError(f"limit (max_consecutive_nonfinite) must be positive, got {limit}")
        self.limit, self.where = limit, where
        # [skipped in all, skipped in a row now, the longest run in a row]
        self.counts = torch.tensor([skipped, 0, 0], dtype=torch.int64, device=device)
        # Off a GPU reading a value costs no wait, and every rank reads at the same step anyway.
        lag = (2 if device.type == "cuda" else 0) if lag is None else lag
        self._reads = LateReads((3,), torch.int64, device, lag)

    def flag(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """1.0 (skip the step) when `loss` or `grad_norm` is not finite, else 0.0; with several
        ranks, 1.0 on all when any rank's loss is not finite, so that their models stay one."""
        bad = (~(torch.isfinite(loss) & torch.isfinite(grad_norm))).float()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        skip = bad.long()
        in_a_row = (self.counts[1] + 1) * skip
        # In place: a step recorded as a CUDA graph reads and writes these very tensors.
        self.counts.copy_(
            torch.stack((self.counts[0] + skip, in_a_row, torch.maximum(self.counts[2], in_a_row)))
        )
        return bad

    def poll(self, step: int) -> None:
        """Called after every step on every rank: raises NonFiniteLoss if the counts of `lag`
        steps before show too long a run. The counts are the same on every rank (`flag`), and
        so is the step this raises at."""
        counts = self._reads.send(self.counts)
        if counts is not None:
            self._raise_if_too_many(counts, step)

    def check(self, step: int) -> int:
        """The steps skipped so far, read now (the host waits for the device); raises
        NonFiniteLoss on too long a run. On all ranks at the same step, or on none."""
        counts = self.counts.tolist()
        self._raise_if_too_many(counts, step)
        return counts[0]

    def skipped(self) -> int:
        """The steps skipped so far, read now, raising nothing: for what one rank alone logs."""
        return int(self.counts[0])

    def _raise_if_too_many(self, counts: list[int], step: int) -> None:
        longest = counts[2]
        if longest >= self.limit:
            raise NonFiniteLoss(
                f"{longest} steps in a row had a non-finite loss or gradient (seen at step "
                f"{step}; max_consecutive_nonfinite={self.limit}); stopping. {self.where}"
            )
