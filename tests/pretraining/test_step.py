"""The loop's step (TrainStep) against a hand-written one: forward and backward per micro-batch,
tf.clip_by_global_norm, the official first Adam update; what it reports; and the property a
CUDA graph of it needs, checked here on the CPU: every tensor it reads or writes between steps
stays where it is. The replay itself is tested on a GPU (test_cuda.py)."""

import copy
import math

import pytest
import torch
from torch._library.custom_ops import OPDEFS
from torch.utils._python_dispatch import TorchDispatchMode

from electra_fast import _extension, amp
from electra_fast.model import ElectraForPretraining
from electra_fast.model.pretraining import draw_keys
from electra_fast.pretraining.optimization import AdamWeightDecay
from electra_fast.pretraining.skipping import SkipCounter
from electra_fast.pretraining.step import METRICS, GraphedStep, TrainStep
from tests.model.test_pretraining import batch, tiny

LR, WD, EPS = 1e-3, 0.01, 1e-6


def micro_batches(count, device="cpu"):
    """`count` (batch on the host, its keys on `device`) pairs."""
    out = []
    for seed in range(count):
        ids, mask = batch(B=3, L=16, seed=seed)
        inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
        out.append((inputs, draw_keys(device, torch.Generator(device).manual_seed(seed))))
    return out


def train_step(model, max_grad_norm, **options):
    """A TrainStep of `model` on its device; `options` as TrainStep takes them (autocast...)."""
    optimizer = AdamWeightDecay(model.parameters(), lr=LR, weight_decay=WD, eps=EPS)
    skips = SkipCounter(next(model.parameters()).device, limit=3)
    return TrainStep(model, optimizer, skips, max_grad_norm=max_grad_norm, **options)


def by_hand(model, micros, max_grad_norm):
    """The step written out: mean loss over the micro-batches, the global norm in float64,
    gradients times max / max(norm, max), then Adam's first update from zero moments. Returns
    the loss, the norm and the first micro-batch's accuracies weighted by its share."""
    losses, accuracies = [], []
    for number, (inputs, keys) in enumerate(micros):
        torch.manual_seed(number)  # dropout, as in the step
        out = model(*inputs.values(), keys=keys, metrics=number == 0)
        (out.loss / len(micros)).backward()
        losses.append(out.loss.item())
        if out.metrics:
            accuracies = [out.metrics[k].item() / len(micros) for k in METRICS.values()]
    params = [p for p in model.parameters() if p.grad is not None]
    norm = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in params))
    lr = float(torch.tensor(LR))  # the step's rate is a float32 tensor
    with torch.no_grad():
        for p in params:
            g = p.grad.double() * (max_grad_norm / norm if norm > max_grad_norm else 1.0)
            m, v = 0.1 * g, 0.001 * g * g
            p.copy_(p.double() - lr * (m / (v.sqrt() + EPS) + WD * p.double()))
    return sum(losses) / len(losses), norm, accuracies


@pytest.mark.parametrize("micros", [1, 2])
@pytest.mark.parametrize("max_grad_norm", [1e-3, math.inf])
def test_a_step_equals_the_step_by_hand(micros, max_grad_norm):
    """With max_grad_norm=1e-3 every gradient is scaled down to where Adam's eps matters, so a
    clipping that was off or wrong shows in the parameters."""
    torch.manual_seed(0)
    model = ElectraForPretraining(tiny())
    hand = copy.deepcopy(model)
    data = micro_batches(micros)
    step = train_step(model, max_grad_norm)
    step.share = 1.0 / micros
    for number, (inputs, keys) in enumerate(data):
        torch.manual_seed(number)
        step.micro(inputs, keys, metrics=number == 0, last=number == micros - 1)
    step.set_learning_rate(LR)
    step.update()
    loss, norm, accuracies = by_hand(hand, data, max_grad_norm)
    values = step.read()
    assert values["loss"] == pytest.approx(loss, rel=1e-5)
    assert values["grad_norm"] == pytest.approx(norm, rel=1e-4)
    assert [values[k] for k in METRICS] == pytest.approx(accuracies, abs=1e-6)
    assert values["gen_loss"] > 0 and values["disc_loss"] > 0
    for (name, got), want in zip(model.named_parameters(), hand.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
    assert all(p.grad is None for p in model.parameters())  # zeroed: freed when eager
    assert not step.totals.any()


def test_what_a_graph_replays_stays_where_it_is():
    """The tensors a recorded step reads or writes (parameters, gradients, moments, learning
    rate, totals, reports, skip counts) keep their storage from step to step once the
    gradients are kept (as GraphedStep keeps them), and the kept gradients are zeroed."""
    torch.manual_seed(0)
    model = ElectraForPretraining(tiny())
    step = train_step(model, 1.0)
    step.keep_gradients = True

    def storage():
        optimizer = step.optimizer
        moments = [t for s in optimizer.state.values() for t in s.values()]
        kept = (step.lr, step.totals, step.reported, step.grad_norm, step.skips.counts)
        grads = [p.grad for p in model.parameters()]
        tensors = [*model.parameters(), *grads, *moments, *kept]
        return [t.data_ptr() for t in tensors]

    where = None
    for number, (inputs, keys) in enumerate(micro_batches(3)):
        step.micro(inputs, keys, metrics=number == 1)
        step.set_learning_rate(LR)
        step.update()
        assert where is None or storage() == where, f"moved at step {number}"
        where = storage()
        assert all(not p.grad.any() for p in model.parameters())
    assert step.skips.check(3) == 0


class HostTransfers(TorchDispatchMode):
    """Records the ops that read a tensor's value back on the host (.item(), bool(), a nonzero
    or boolean index, whose output shape depends on values) or copy Python values to the
    device (torch.tensor): on a GPU each waits for the device or cannot be recorded in a CUDA
    graph. A CPU run sees the same ops as a GPU run, less what happens inside a kernel."""

    OPS = {"_local_scalar_dense", "nonzero", "masked_select", "is_nonzero", "lift_fresh",
           "lift_fresh_copy", "equal", "allclose", "_unique2", "unique_dim",
           "unique_consecutive"}  # fmt: skip

    def __init__(self, inside_our_ops: bool):
        super().__init__()
        self.inside_our_ops, self.seen = inside_our_ops, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        indices = args[1] if func._opname.startswith("index") and len(args) > 1 else ()
        by_mask = isinstance(indices, (list, tuple)) and any(
            isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in indices
        )
        if func._opname in self.OPS or by_mask:
            self.seen.append(str(func))
        if self.inside_our_ops and func.namespace == _extension.REFERENCE_LIBRARY:
            # A reference op's Python function, run where this mode sees its ops (a C++
            # kernel's inner ops are its own business: its CUDA twin reads nothing back).
            reference = OPDEFS[f"{func.namespace}::{func._opname}"]._init_fn
            with self:
                return reference(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    ("scaled", "precision"), [(False, "fp32"), (True, "fp32"), (False, "bf16")],
    ids=["unscaled", "loss-scaler", "bf16"],
)  # fmt: skip
@pytest.mark.parametrize("reference", [False, True])
def test_the_parts_a_graph_records_neither_read_nor_copy_values(
    monkeypatch, reference, scaled, precision
):
    """Both micro-steps (with and without metrics) and the update, on our kernels and on the
    torch references, with and without fp16's loss scaler, and under bf16 autocast (the weight
    casts), call no op that reads a device value on the host or copies one there."""
    if not reference and not _extension.has_kernel("generator_step", "cpu"):
        pytest.skip("no CPU kernels built")
    monkeypatch.setattr(_extension, "FORCE_REFERENCE", reference)
    torch.manual_seed(0)
    options = {"scaler": torch.amp.GradScaler("cpu")} if scaled else {}
    options["autocast"] = amp.autocast(precision, torch.device("cpu"), cache=False)
    step = train_step(ElectraForPretraining(tiny()), 1.0, **options)
    step.keep_gradients = True
    inputs, keys = micro_batches(1)[0]
    step.micro(inputs, keys, metrics=True)  # as GraphedStep: eager runs before the recording
    step.set_learning_rate(LR)
    step.update()
    with HostTransfers(inside_our_ops=reference) as transfers:
        step.micro(inputs, keys, metrics=True)
        step.micro(inputs, keys, metrics=False)
        step.update()
    assert not transfers.seen


def test_a_non_finite_loss_leaves_the_parameters_and_counts_the_skip():
    torch.manual_seed(0)
    model = ElectraForPretraining(tiny())
    step = train_step(model, 1.0)
    before = copy.deepcopy(model.state_dict())
    inputs, keys = micro_batches(1)[0]
    step.micro(inputs, keys, metrics=False)
    next(model.parameters()).grad[0, 0] = math.nan
    step.set_learning_rate(LR)
    step.update()
    assert math.isnan(step.read()["grad_norm"])
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=name)
    assert step.skips.check(1) == 1


def test_graphs_need_a_gpu():
    step = train_step(ElectraForPretraining(tiny()), 1.0)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device, the step's is cpu"):
        GraphedStep(step)


def test_max_grad_norm_must_be_positive():
    with pytest.raises(ValueError, match="max_grad_norm must be positive, got 0"):
        train_step(ElectraForPretraining(tiny()), 0)


@pytest.mark.parametrize("cache", [True, False])
def test_autocast_cache_setting(cache):
    with amp.autocast("bf16", torch.device("cpu"), cache=cache)():
        assert torch.is_autocast_cache_enabled() == cache
