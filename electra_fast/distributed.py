"""What the training loops share to run under torchrun: the process group (NCCL on GPUs, gloo
on CPUs), each rank's device, and gathering per-item results that the ranks computed on
their shares of a list."""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Iterator

import torch
import torch.distributed as dist

DEVICE_VARIABLE = "ELECTRA_FAST_DEVICE"


def device_type(device: str | None = None) -> str:
    """The device type to train on: `device` ("cuda" or "cpu") if given, else
    $ELECTRA_FAST_DEVICE if set, else "cuda" when a GPU is visible."""
    chosen = device or os.environ.get(DEVICE_VARIABLE) or None
    if chosen is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if chosen not in ("cuda", "cpu"):
        where = "device" if device else f"${DEVICE_VARIABLE}"
        raise ValueError(f"{where} must be 'cuda' or 'cpu', got {chosen!r}")
    if chosen == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is visible")
    return chosen


def init(kind: str) -> tuple[int, int]:
    """(rank, world size): (0, 1) in a plain process; under torchrun, joins the process
    group the first time (NCCL for `kind` "cuda", else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if kind == "cuda" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def close() -> None:
    """Leaves the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()  # DistributedDataParallel's reducer goes before its process group
        if torch.__version__ < (2, 8):
            # Before 2.8 torch destroys a group holding the GIL while it joins the group's
            # worker threads (pytorch/pytorch#154976), and a gloo worker that is still letting
            # go of a finished collective's tensor needs the GIL to free it: the two wait for
            # each other forever, in about one run in six on torch 2.6. A pause lets the
            # workers finish first.
            time.sleep(0.1)
        dist.destroy_process_group()


def device_for(rank: int, kind: str) -> torch.device:
    """The rank's GPU (by LOCAL_RANK, made current for NCCL) for `kind` "cuda", or the CPU."""
    if kind == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def is_main() -> bool:
    """Whether this process logs and writes: rank 0, or the only process."""
    return not dist.is_initialized() or dist.get_rank() == 0


def share(items: list) -> list:
    """This rank's share of `items`: every world-th item from its rank on."""
    if not dist.is_initialized():
        return items
    return items[dist.get_rank() :: dist.get_world_size()]


def gather(mine: list, total: int) -> list:
    """The results of every rank's `share`, gathered on every rank in the original order:
    `mine[i]` belongs to item rank + i x world."""
    if not dist.is_initialized():
        return mine
    world = dist.get_world_size()
    parts: list = [None] * world
    dist.all_gather_object(parts, mine)
    ordered: list = [None] * total
    for rank, part in enumerate(parts):
        ordered[rank::world] = part
    return ordered


@contextlib.contextmanager
def together(what: str) -> Iterator[None]:
    """Runs the block on every rank and, when it raised on any, raises on every rank once all
    have run it: the rank that failed its own error, the others a RuntimeError that names the
    failed ranks and what they said. Without it a rank that fails alone (a dataset missing on
    one machine) leaves the others waiting in their next collective until its timeout. The
    block must hold no collective of its own. Without a process group, a plain block."""
    if not dist.is_initialized():
        yield
        return
    error = None
    try:
        yield
    except Exception as raised:  # noqa: BLE001 - reported to every rank, then raised again
        error = raised
    failed = failures(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if failed:
        raise RuntimeError(f"{what} failed on rank(s) {sorted(failed)} ({said(failed)})")


def failures(problem: str | None) -> dict[int, str]:
    """Every rank's `problem` (None: none), gathered on every rank: rank -> problem of the ranks
    that had one, so that all of them can raise alike. Without a process group, this rank's."""
    if not dist.is_initialized():
        return {} if problem is None else {0: problem}
    problems: list = [None] * dist.get_world_size()
    dist.all_gather_object(problems, problem)
    return {rank: problem for rank, problem in enumerate(problems) if problem is not None}


def said(failed: dict[int, str]) -> str:
    """What `failures` gathered, as one line for an error message."""
    return "; ".join(f"rank {rank}: {problem}" for rank, problem in failed.items())


def same_everywhere(what: str, value) -> None:
    """Raises on every rank unless every rank passes an equal `value` (a fingerprint of
    something each rank read for itself, as the prepared dataset on each machine)."""
    if not dist.is_initialized():
        return
    values: list = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    differ = [rank for rank, other in enumerate(values) if other != values[0]]
    if differ:
        raise ValueError(
            f"{what} differs between ranks: rank(s) {differ} read {values[differ[0]]!r}, "
            f"rank 0 {values[0]!r}"
        )


class LateReads:
    """Small device values read on the host a fixed number of calls after they were sent:
    `send(value)` queues a copy of `value` (pinned host memory on a GPU) and returns, as a
    list, the value sent `lag` calls before (None for the first `lag` calls). That copy has
    long arrived, so a GPU step never waits for it, and ranks that send equal values at every
    call see the same value at the same call, which a read of "whatever has arrived" would
    not give them. `lag` 0 reads the value just sent (the host waits for it)."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                 lag: int = 2):  # fmt: skip
        if lag < 0:
            raise ValueError(f"lag must be 0 or more, got {lag}")
        self._lag, self._lazy = lag, device.type == "cuda"
        # A ring of lag + 1 buffers: a buffer is written again only after the read of its
        # previous value, which waited for that copy.
        self._host = [torch.zeros(shape, dtype=dtype, pin_memory=self._lazy)
                      for _ in range(lag + 1)]  # fmt: skip
        self._events: list = [None] * (lag + 1)
        self._calls = 0

    def send(self, value: torch.Tensor) -> list | None:
        slot = self._calls % (self._lag + 1)
        self._host[slot].copy_(value, non_blocking=self._lazy)
        if self._lazy:
            self._events[slot] = torch.cuda.Event()
            self._events[slot].record()
        self._calls += 1
        if self._calls <= self._lag:
            return None
        oldest = self._calls % (self._lag + 1)  # the slot written lag calls ago
        if self._events[oldest] is not None:
            self._events[oldest].synchronize()
        return self._host[oldest].tolist()


class StopRequests:
    """Stop requests (SIGINT, SIGTERM) that the ranks agree on: a signal may reach the ranks
    at different steps, or only some of them, yet every rank must leave the loop after the same
    step, or one would wait in a collective for another that has left. `request()` notes this
    rank's; `agreed()`, called once per step on every rank, says whether any rank had asked
    `lag` calls before. Each call all-reduces (max) the flags on `device` in the run's own
    process group, queued like the step's collectives, and reads the result `lag` calls later
    (`LateReads`). Without a process group, the local request at once."""

    def __init__(self, device: torch.device, lag: int = 2):
        self.requested = False
        self._distributed = dist.is_initialized() and dist.get_world_size() > 1
        self._device = device
        self._reads = LateReads((1,), torch.int32, device, lag)

    def request(self, *_) -> None:  # a signal handler's arguments, ignored
        self.requested = True

    def agreed(self) -> bool:
        if not self._distributed:
            return self.requested
        flag = torch.full((1,), int(self.requested), dtype=torch.int32, device=self._device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        late = self._reads.send(flag)
        return late is not None and bool(late[0])
