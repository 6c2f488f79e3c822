"""The pretraining loop's step on tensors that stay where they are: run eagerly (`TrainStep`),
or recorded once as CUDA graphs and replayed (`GraphedStep`).

An eager step of ELECTRA-small issues about 900 ops that are not views, each a trip through
Python and the dispatcher and most of them a kernel launch; at the 3M tokens/s we aim for, a
128 x 128 step has 5.5 ms, about what the host needs to issue them (benchmarks/bench_step_host.py).
A replayed graph is one launch for all of them. What a graph needs, TrainStep gives both ways,
so that the eager tests cover the code that is recorded: every tensor the step reads or writes
between steps (the batch, the keys, the learning rate, the gradients, the running totals, the
skip counts) is allocated once and changed in place, and nothing in the step reads a value
back on the host.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch

from electra_fast.pretraining.optimization import AdamWeightDecay, clip_divisor
from electra_fast.pretraining.skipping import SkipCounter

# What a step reports, in the order of TrainStep.totals: the losses, then (on steps with
# metrics) each name's value in the model's metrics. The discriminator's accuracy alone hides
# whether it learns: a discriminator that calls every token original scores 1 - replaced, which
# rises as the generator gets better (more of its samples equal the original token); precision
# and recall on the replaced tokens do not move with it.
LOSSES = ("loss", "gen_loss", "disc_loss")
METRICS = {"mlm_acc": "mlm_accuracy", "disc_acc": "disc_accuracy",
           "disc_precision": "disc_precision", "disc_recall": "disc_recall",
           "replaced": "replaced_fraction"}  # fmt: skip
REPORTED = (*LOSSES, *METRICS)


class TrainStep:
    """One optimisation step in two parts: `micro` (forward and backward of one micro-batch,
    its gradients added to the others') as many times as the accumulation asks, then `update`
    (global norm, skip decision, clipping inside the fused Adam update, gradients zeroed).

    `trained` is the model as the loop calls it (maybe wrapped in DistributedDataParallel or
    torch.compile); `share` = 1 / micro-batches per step; `forward` holds the keyword arguments
    every call passes (row_offset, sync_counts). The learning rate is `self.lr`, a 0-d tensor
    every parameter group reads (set it with set_learning_rate before `update`)."""

    def __init__(
        self,
        trained: torch.nn.Module,
        optimizer: AdamWeightDecay,
        skips: SkipCounter,
        *,
        max_grad_norm: float,
        share: float = 1.0,
        autocast: Callable[[], AbstractContextManager] = nullcontext,
        scaler: torch.amp.GradScaler | None = None,
        **forward,
    ):
        if not max_grad_norm > 0:  # inf: no clipping
            raise ValueError(f"max_grad_norm must be positive, got {max_grad_norm}")
        self.trained, self.optimizer, self.skips = trained, optimizer, skips
        self.max_grad_norm, self.share, self.forward = max_grad_norm, share, forward
        self.autocast, self.scaler = autocast, scaler
        self.device = skips.counts.device
        self.totals = torch.zeros(len(REPORTED), device=self.device)  # this step's, so far
        self.reported = torch.zeros(len(REPORTED), device=self.device)  # the last step's
        self.grad_norm = torch.zeros((), device=self.device)  # the last step's, before clipping
        self.lr = torch.zeros((), device=self.device)
        for group in optimizer.param_groups:
            group["lr"] = self.lr
        # A graph replays into the gradients its recording saw: they are zeroed, not freed.
        self.keep_gradients = False

    def set_learning_rate(self, rate: float) -> None:
        self.lr.fill_(rate)

    def micro(self, batch: dict, keys: torch.Tensor, *, metrics: bool, last: bool = True) -> None:
        """Forward and backward of one micro-batch ([B, L] input_ids, attention_mask and
        token_type_ids, on any device: they are copied to the step's without waiting), with
        `keys` its masking and sampling keys; its losses (and, with `metrics`, accuracies)
        added to `totals` with weight `share`. `last`: the step's last micro-batch, after which
        DistributedDataParallel averages the gradients (before it, no_sync)."""
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        # DistributedDataParallel's (torch.compile's wrapper passes it through).
        no_sync = getattr(self.trained, "no_sync", None)
        with no_sync() if no_sync and not last else nullcontext(), self.autocast():
            output = self.trained(
                batch["input_ids"],
                batch["attention_mask"],
                batch["token_type_ids"],
                metrics=metrics,
                keys=keys,
                check_values=False,  # the loop checked the batch on the host
                **self.forward,
            )
            loss = output.loss * self.share
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        values = [output.loss, output.gen_loss, output.disc_loss]
        if output.metrics:
            values += [output.metrics[name] for name in METRICS.values()]
        with torch.no_grad():  # one stack and one add, not three ops per value
            self.totals[: len(values)] += torch.stack(values).float() * self.share

    def update(self) -> None:
        """The update from the summed gradients, on the device: skipped there when the loss or
        the norm is not finite (with fp16, also when the scaled gradients overflowed)."""
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        grad_norm = self.optimizer.grad_norm()
        divisor = clip_divisor(grad_norm, self.max_grad_norm)
        skip = self.skips.flag(self.totals[0], grad_norm)
        self.optimizer.step(found_inf=skip, grad_scale=divisor)
        if self.scaler:
            self.scaler.update()  # from the overflow unscale_ found: smaller after one
        with torch.no_grad():
            self.grad_norm.copy_(grad_norm)
            self.reported.copy_(self.totals)
            self.totals.zero_()
        self.optimizer.zero_grad(set_to_none=not self.keep_gradients)

    def read(self) -> dict[str, float]:
        """The last step's losses, metrics (0 unless its micro-steps had them) and
        gradient norm, read now: the host waits for the device."""
        values = torch.cat((self.reported, self.grad_norm[None])).tolist()
        return dict(zip((*REPORTED, "grad_norm"), values, strict=True))


class GraphedStep:
    """A TrainStep whose parts are replayed from CUDA graphs: the host's share of a step is
    then the copies of the batch and the keys, the learning rate's fill and the replays.

    With one micro-batch per step (share 1) a part is a whole step, with metrics or without:
    `micro` only copies the batch in, and `update` replays forward, backward and update as one
    graph. Its gradients are made and used inside the graph (set to None before it, as torch's
    whole-network capture does), so backward writes them instead of adding to zeroed buffers
    (in the H100 profile of an ELECTRA-small step replayed from the former graphs, the adds
    beyond the eager step's and the fills took about 0.86 ms of 18.4). With
    gradient accumulation the parts are the update, the micro-step with metrics and the one
    without, and the gradients must outlive the micro-steps' graphs: they are kept, and zeroed
    by the update.

    Each part runs eagerly WARMUP times, on a side stream as torch's CUDA graph notes ask,
    before any is recorded: what the first calls create lazily (cuBLAS handles, the
    optimiser's moments, the kept gradients) exists before recording, and no eager run needs
    memory beside the graphs' pool. (So once the part without metrics has had its eager runs,
    the next ones compute metrics whether or not they are logged: metrics change no gradient.)
    Each part is then recorded when it is next called, and replayed from then on. The graphs
    share one memory pool: what a graph writes that outlives it (kept gradients, the totals,
    the parameters) was allocated outside the pool, so none of them can overwrite another's
    results, and they may replay in any order.

    fp16's loss scaler is recorded with the rest: torch's GradScaler scales, unscales (finding
    overflows) and grows or backs off its scale in kernels on the device, and the update obeys
    the overflow through the skip flag; its `step`, which would read the overflow on the host,
    is not used. The batch must keep its shape (PaddedBatches pads every batch to the dataset's
    length). Not for DistributedDataParallel or torch.compile: the loop refuses those with
    cuda_graphs."""

    WARMUP = 3

    def __init__(self, step: TrainStep):
        if step.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, the step's is {step.device}")
        self._attach(step)
        self.pool = torch.cuda.graph_pool_handle()
        self.side = torch.cuda.Stream(step.device)

    def _attach(self, step: TrainStep) -> None:
        self.step = step
        self.whole = step.share == 1.0  # one graph per step
        step.keep_gradients = not self.whole
        if self.whole:
            self.parts = (("step", True), ("step", False))
        else:
            self.parts = (("update",), ("micro", True), ("micro", False))
        self.inputs: dict[str, torch.Tensor] = {}
        self.keys: torch.Tensor | None = None
        self.graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self.eager_runs: Counter = Counter()
        self.pending: bool | None = None  # whole steps: the metrics of the batch copied in

    def set_learning_rate(self, rate: float) -> None:
        self.step.set_learning_rate(rate)

    def micro(self, batch: dict, keys: torch.Tensor, *, metrics: bool, last: bool = True) -> None:
        if not self.inputs:
            self.inputs = {
                k: torch.empty_like(v, device=self.step.device) for k, v in batch.items()
            }
            self.keys = torch.empty_like(keys, device=self.step.device)
        for name, value in batch.items():
            if value.shape != self.inputs[name].shape:
                raise ValueError(
                    f"a step recorded as a CUDA graph takes batches of one shape: {name} was "
                    f"{tuple(self.inputs[name].shape)}, now {tuple(value.shape)}"
                )
            self.inputs[name].copy_(value, non_blocking=True)
        self.keys.copy_(keys, non_blocking=True)
        if self.whole:
            if self.pending is not None:
                raise RuntimeError("a step of one micro-batch got a second before its update")
            self.pending = metrics
            return
        metrics = self._metrics("micro", metrics)
        self._run(
            ("micro", metrics), lambda: self.step.micro(self.inputs, self.keys, metrics=metrics)
        )

    def update(self) -> None:
        if not self.whole:
            self._run(("update",), self.step.update)
            return
        if self.pending is None:
            raise RuntimeError("update() without a micro-batch")
        metrics = self._metrics("step", self.pending)
        self.pending = None

        def step() -> None:
            self.step.micro(self.inputs, self.keys, metrics=metrics)
            self.step.update()

        self._run(("step", metrics), step)

    def _metrics(self, part: str, asked: bool) -> bool:
        """Once the variant without metrics is warm, the one with them warms up."""
        return asked or (not self._warm() and self.eager_runs[(part, False)] >= self.WARMUP)

    def read(self) -> dict[str, float]:
        return self.step.read()

    def _warm(self) -> bool:
        return all(self.eager_runs[part] >= self.WARMUP for part in self.parts)

    def _run(self, part: tuple, run: Callable[[], None]) -> None:
        graph = self.graphs.get(part)
        if graph is None and not self._warm():
            self.eager_runs[part] += 1
            self._run_eagerly(run)
            return
        if graph is None:
            graph = self.graphs[part] = self._record(part, run)
        graph.replay()  # recording ran nothing: the first replay is this step's run

    def _run_eagerly(self, run: Callable[[], None]) -> None:
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            run()
        torch.cuda.current_stream().wait_stream(self.side)

    def _record(self, part: tuple, run: Callable[[], None]) -> torch.cuda.CUDAGraph:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                run()
        except RuntimeError as error:
            raise RuntimeError(
                f"recording the step's {part[0]} as a CUDA graph failed ({error}); train "
                "with cuda_graphs=false"
            ) from error
        return graph
