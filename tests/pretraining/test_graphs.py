"""GraphedStep's logic on the CPU, its CUDA graphs emulated op by op: what a graph would freeze
at recording (a Python float, a branch taken, an attribute later rebound) is frozen here too, so
a replay that trains as the eager step shows that everything that changes between steps reaches
the graph through tensors it reads. The GPU tests (test_cuda.py) replay real graphs."""

import math
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from electra_fast import amp
from electra_fast.model import ElectraForPretraining
from electra_fast.pretraining.step import METRICS, GraphedStep
from tests.model.test_pretraining import tiny
from tests.pretraining.test_step import micro_batches, train_step


class RecordedOps:
    """A graph as a list of ops, each with the very tensors it took and returned at recording.
    A replay runs them again on those tensors, and writes what each returns into the tensor it
    returned then: the fixed addresses of a CUDA graph, with tensors for addresses."""

    def __init__(self):
        self.ops = []

    @torch.no_grad()  # ops below autograd, as a graph's kernels are
    def replay(self):
        for func, args, kwargs, recorded in self.ops:
            result = func(*args, **kwargs)
            for old, new in zip(tree_leaves(recorded), tree_leaves(result), strict=True):
                if isinstance(old, torch.Tensor) and old is not new:
                    old.copy_(new)


class Recording(TorchDispatchMode):
    def __init__(self, graph: RecordedOps):
        super().__init__()
        self.graph = graph

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.graph.ops.append((func, args, kwargs or {}, out))
        return out


class EmulatedGraphedStep(GraphedStep):
    """GraphedStep with RecordedOps for graphs. A CUDA graph records without running; this
    recording runs the ops (their outputs must exist), so it puts back what they changed: the
    tensors of `state()` and the random generator."""

    def __init__(self, step, state):
        self._attach(step)
        self.state = state

    def _run_eagerly(self, run):
        run()

    def _record(self, part, run):
        before = [t.clone() for t in self.state()]
        generator = torch.get_rng_state()
        graph = RecordedOps()
        with Recording(graph):
            run()
        for tensor, saved in zip(self.state(), before, strict=True):
            tensor.copy_(saved)
        torch.set_rng_state(generator)
        return graph


def state_of(model, step):
    """Every tensor a step changes in place, for the recording to put back."""

    def tensors():
        moments = [t for s in step.optimizer.state.values() for t in s.values()]
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        kept = [step.totals, step.reported, step.grad_norm, step.lr, step.skips.counts]
        # The loss scaler's scale and count of good steps, which its update changes in place
        # (GradScaler's own tensors: its state_dict gives their values as Python numbers).
        scaler = [step.scaler._scale, step.scaler._growth_tracker] if step.scaler else []
        return [*(p.data for p in model.parameters()), *grads, *moments, *kept, *scaler]

    return tensors


def train(runner, steps, first=0, device="cpu", micros=1):
    """Steps `first` to `first + steps` of `micros` micro-batches each, with new batches, keys,
    dropout seeds and rates each time, and metrics at every third: whatever a replay took from
    its recording instead of from the step would show. Returns what each step reports."""
    losses = []
    data = micro_batches(4, device)
    for number in range(first, first + steps):
        torch.manual_seed(100 + number)
        for micro in range(micros):
            inputs, keys = data[(number * micros + micro) % len(data)]
            runner.micro(inputs, keys, metrics=number % 3 == 0, last=micro == micros - 1)
        runner.set_learning_rate(1e-3 * (1 + number % 4))
        runner.update()
        losses.append(runner.read())
    return losses


def overflowing_scaler():
    """fp16's loss scaler with steps so large that it overflows float32 by itself: the scale
    grows by 2^37 after each good step, from 2^16 to 2^127 at the fourth step, where ELECTRA's
    loss (about 40) times the scale is inf. That step is skipped and backs the scale off to
    2^90; from then on every other step overflows. Both branches are taken in a kernel
    (_amp_update_scale_) from device values, so a replay must take them as the eager step."""
    return torch.amp.GradScaler(
        "cpu", init_scale=2.0**16, growth_factor=2.0**37, backoff_factor=2.0**-37,
        growth_interval=1,
    )  # fmt: skip


# One micro-batch per step: each step one graph, its gradients made inside it. Two: the
# micro-steps' graphs add to kept gradients, which the update's graph reads and zeroes.
PARTS = {
    1: {("step", True), ("step", False)},
    2: {("update",), ("micro", True), ("micro", False)},
}


@pytest.mark.parametrize("micros", [1, 2], ids=["one-micro-batch", "accumulation"])
@pytest.mark.parametrize(
    ("scaled", "precision"), [(False, "fp32"), (True, "fp32"), (False, "bf16")],
    ids=["unscaled", "loss-scaler", "bf16"],
)  # fmt: skip
def test_a_replayed_step_trains_as_the_eager_one(scaled, precision, micros):
    """bf16: under CPU autocast, where each forward casts the weights into a new buffer
    (model/casts.py): a replay's casts must come from the parameters the updates changed, as
    the eager step's do."""
    torch.manual_seed(0)
    eager_model = ElectraForPretraining(tiny())
    graphed_model = ElectraForPretraining(tiny())
    graphed_model.load_state_dict(eager_model.state_dict())
    autocast = amp.autocast(precision, torch.device("cpu"), cache=False)
    eager, step = (
        train_step(
            model,
            1.0,
            share=1 / micros,
            scaler=overflowing_scaler() if scaled else None,
            autocast=autocast,
        )  # fmt: skip
        for model in (eager_model, graphed_model)
    )
    graphed = EmulatedGraphedStep(step, state_of(graphed_model, step))
    steps = 3 * GraphedStep.WARMUP + 6
    want, got = train(eager, steps, micros=micros), train(graphed, steps, micros=micros)
    assert set(graphed.graphs) == PARTS[micros]
    assert sum(graphed.eager_runs.values()) < 3 * steps  # most parts ran from their graphs
    for number, (a, b) in enumerate(zip(got, want, strict=True)):
        for key in ("loss", "gen_loss", "disc_loss", "grad_norm"):  # an overflow's norm: nan
            assert a[key] == pytest.approx(b[key], rel=1e-6, nan_ok=True), (number, key)
        if number % 3 == 0:  # a logged step has its accuracies
            for key in METRICS:
                assert a[key] == pytest.approx(b[key], abs=1e-6), (number, key)
    for (name, a), b in zip(graphed_model.named_parameters(), eager_model.parameters(),
                            strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    overflows = [n for n, r in enumerate(got) if not math.isfinite(r["grad_norm"])]
    if scaled:  # steps 3, 5, ..., 13, the last ones replayed
        assert overflows == list(range(3, steps, 2)), overflows
        assert step.skips.check(steps) == eager.skips.check(steps) == len(overflows)
        assert step.scaler.get_scale() == eager.scaler.get_scale() == 2.0**127
    else:
        assert not overflows


def test_a_batch_of_another_shape_is_refused():
    torch.manual_seed(0)
    model = ElectraForPretraining(tiny())
    step = train_step(model, 1.0)
    graphed = EmulatedGraphedStep(step, state_of(model, step))
    inputs, keys = micro_batches(1)[0]
    graphed.micro(inputs, keys, metrics=False)
    shorter = {name: value[:, :8] for name, value in inputs.items()}
    with pytest.raises(ValueError, match=r"input_ids was \(3, 16\), now \(3, 8\)"):
        graphed.micro(shorter, keys, metrics=False)


def writes_into(ops, tensors) -> Counter:
    """(op, index in `tensors`): how often each in-place op of a recorded graph writes into
    each of `tensors`."""
    index = {t.data_ptr(): i for i, t in enumerate(tensors)}
    found = Counter()
    for func, args, _, _ in ops:
        if not func._schema.is_mutable or not args:
            continue
        first = args[0] if isinstance(args[0], (list, tuple)) else [args[0]]
        for t in first:
            if isinstance(t, torch.Tensor) and t.data_ptr() in index:
                found[func.__name__, index[t.data_ptr()]] += 1
    return found


@pytest.mark.parametrize("micros", [1, 2], ids=["one-micro-batch", "accumulation"])
def test_gradients_are_added_and_zeroed_only_with_accumulation(micros):
    """With one micro-batch a step's graph writes each gradient once, as backward makes it (a
    copy where autograd clones rather than keeps the tensor: here the recording's references
    make it clone), and nothing outside the graph keeps it; with accumulation the micro-steps
    add to kept gradients, which the update zeroes. (The fused update's own reads are the
    oracle for which tensors the gradients are.)"""
    torch.manual_seed(0)
    model = ElectraForPretraining(tiny())
    step = train_step(model, 1.0, share=1 / micros)
    graphed = EmulatedGraphedStep(step, state_of(model, step))
    train(graphed, 3 * GraphedStep.WARMUP + 2, micros=micros)
    update = graphed.graphs[("step", False) if micros == 1 else ("update",)].ops
    (adam,) = [args for func, args, _, _ in update if func.__name__.startswith("_fused_adamw_")]
    grads = adam[1]
    assert len(grads) == len(list(model.parameters()))
    writes = writes_into(update, grads)
    if micros == 1:
        assert {name for name, _ in writes} <= {"copy_.default"}, writes
        assert max(writes.values(), default=1) == 1, writes
        assert all(p.grad is None for p in model.parameters())
    else:
        adds = writes_into(graphed.graphs[("micro", False)].ops, grads)
        assert {i for (name, i) in adds if name == "add_.Tensor"} == set(range(len(grads)))
        assert {i for name, i in writes} == set(range(len(grads))), "zeroed by the update"
        assert all(p.grad is not None for p in model.parameters())
