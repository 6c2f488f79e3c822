"""Skipping the steps whose loss or gradient is not finite, without the host waiting for the
device at every step.

Reading a GPU value on the host (`bool(torch.isfinite(loss))`) waits until the device has
finished everything queued so far; the device then idles while the host queues the next step's
kernels. So the decision stays on the device: `SkipCounter.flag` makes the 0-d flag that the
optimiser's `step(found_inf=...)` obeys, and updates the counts there. The host learns them
late: a copy to pinned memory, read once it has arrived (`poll`, which never waits), and at
once where the loop synchronises anyway (`check`: logging, checkpoints, the end). A skipped step
still counts as a step: the schedule and the data move on, as with torch's loss scaler.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class NonFiniteLoss(RuntimeError):
    pass


class SkipCounter:
    """The steps skipped so far, the current run of skipped steps and the longest such run, on
    the device; more than `limit - 1` in a row stop the run (`NonFiniteLoss`)."""

    def __init__(self, device: torch.device, limit: int, skipped: int = 0, where: str = ""):
        if limit < 1:
            raise ValueError(f"limit (max_consecutive_nonfinite) must be positive, got {limit}")
        self.limit, self.where = limit, where
        self._lazy = device.type == "cuda"  # elsewhere reading a value costs no wait
        # [skipped in all, skipped in a row now, the longest run in a row]
        self.counts = torch.tensor([skipped, 0, 0], dtype=torch.int64, device=device)
        self._host = torch.zeros(3, dtype=torch.int64, pin_memory=self._lazy)
        self._arrived: torch.cuda.Event | None = None  # the event of a copy on its way

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
        """Raises NonFiniteLoss if the counts of an earlier step, already on the host, show
        too long a run; on a GPU it never waits (the check then comes at a later step)."""
        if not self._lazy:
            self.check(step)
            return
        if self._arrived is not None:
            if not self._arrived.query():
                return  # still on its way: looked at again at the next step
            self._raise_if_too_many(self._host, step)
        self._host.copy_(self.counts, non_blocking=True)
        self._arrived = torch.cuda.Event()
        self._arrived.record()

    def check(self, step: int) -> int:
        """The steps skipped so far, read now (the host waits for the device); raises
        NonFiniteLoss on too long a run."""
        counts = self.counts.cpu()
        self._raise_if_too_many(counts, step)
        return int(counts[0])

    def _raise_if_too_many(self, counts: torch.Tensor, step: int) -> None:
        longest = int(counts[2])
        if longest >= self.limit:
            raise NonFiniteLoss(
                f"{longest} steps in a row had a non-finite loss or gradient (seen at step "
                f"{step}; max_consecutive_nonfinite={self.limit}); stopping. {self.where}"
            )
