"""The optimiser against a hand-written official update, the schedule's values, the
parameter groups."""

import copy
import math

import pytest
import torch
from torch import nn

from electra_fast.pretraining.optimization import (
    AdamWeightDecay,
    clip_divisor,
    learning_rate,
    parameter_groups,
)


def official_update(param, grads, lr, b1=0.9, b2=0.999, eps=1e-6, wd=0.01):
    """AdamWeightDecayOptimizer.apply_gradients, element by element, in float64; `lr` a rate,
    or one per step."""
    p = [float(x) for x in param]
    m = [0.0] * len(p)
    v = [0.0] * len(p)
    rates = lr if isinstance(lr, list) else [lr] * len(grads)
    for g, rate in zip(grads, rates, strict=True):
        for i, gi in enumerate(g):
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi * gi
            update = m[i] / (math.sqrt(v[i]) + eps) + wd * p[i]
            p[i] = p[i] - rate * update
    return p


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_update_equals_the_official_one(weight_decay):
    torch.manual_seed(0)
    start = torch.randn(5, dtype=torch.float64)
    grads = [torch.randn(5, dtype=torch.float64) for _ in range(4)]
    param = nn.Parameter(start.clone())
    optimizer = AdamWeightDecay([param], lr=0.1, weight_decay=weight_decay)
    for g in grads:
        param.grad = g.clone()
        optimizer.step()
    want = official_update(start.tolist(), [g.tolist() for g in grads], 0.1, wd=weight_decay)
    torch.testing.assert_close(param.detach(), torch.tensor(want, dtype=torch.float64))


def test_a_tensor_learning_rate_is_read_at_each_step():
    """A group's lr as a 0-d float32 tensor (what a step replayed from a CUDA graph reads):
    changed in place between steps, each step uses its value then."""
    torch.manual_seed(0)
    start = torch.randn(5)
    grads = [torch.randn(5) for _ in range(4)]
    rates = [0.1, 0.05, 0.02, 0.2]
    param = nn.Parameter(start.clone())
    lr = torch.zeros(())
    optimizer = AdamWeightDecay([param], lr=lr)
    for g, rate in zip(grads, rates, strict=True):
        lr.fill_(rate)
        param.grad = g.clone()
        optimizer.step()
    float32_rates = [float(torch.tensor(r)) for r in rates]  # the kernel reads float32
    want = official_update(start.tolist(), [g.tolist() for g in grads], float32_rates)
    torch.testing.assert_close(param.detach(), torch.tensor(want, dtype=torch.float32))


@pytest.mark.parametrize("lr", [torch.tensor([0.1]), torch.tensor(0.1, dtype=torch.float64)])
def test_a_tensor_learning_rate_must_be_0d_float32(lr):
    with pytest.raises(ValueError, match="tensor lr must be 0-d float32"):
        AdamWeightDecay([nn.Parameter(torch.zeros(2))], lr=lr)


def test_schedule_values():
    base, warmup, total = 1e-3, 10, 100
    assert learning_rate(0, base, warmup, total) == 0.0
    assert learning_rate(5, base, warmup, total) == pytest.approx(base * 0.95 * 0.5)
    assert learning_rate(10, base, warmup, total) == pytest.approx(base * 0.9)
    assert learning_rate(60, base, warmup, total) == pytest.approx(base * 0.4)
    assert learning_rate(100, base, warmup, total) == 0.0
    assert learning_rate(150, base, warmup, total) == 0.0
    assert learning_rate(3, base, 0, total) == pytest.approx(base * 0.97)


def test_no_decay_for_layer_norms_and_biases():
    from electra_fast import ElectraConfig, ElectraDiscriminator

    model = ElectraDiscriminator(
        ElectraConfig(
            vocab_size=20,
            embedding_size=8,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            max_position_embeddings=8,
        )
    )
    decay, no_decay = parameter_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert no_decay_names == {n for n in names.values() if n.endswith("bias") or "norm." in n}
    assert "encoder.embeddings.word.weight" in {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(eps=0.0), "eps must be positive, got 0.0"),
        (dict(lr=-1e-3), "lr must be >= 0, got -0.001"),
        (dict(betas=(0.9, 1.0)), r"betas must be two numbers in \[0, 1\), got \(0.9, 1.0\)"),
        (dict(weight_decay=-0.01), "weight_decay must be >= 0, got -0.01"),
    ],
)
def test_a_bad_setting_is_named(settings, message):
    with pytest.raises(ValueError, match=message):
        AdamWeightDecay([nn.Parameter(torch.zeros(1))], **settings)


def test_parameters_of_several_dtypes_each_get_the_official_update():
    torch.manual_seed(0)
    starts = [torch.randn(3, dtype=torch.float64), torch.randn(4, dtype=torch.float32)]
    grads = [[torch.randn(s.shape, dtype=s.dtype) for s in starts] for _ in range(3)]
    params = [nn.Parameter(s.clone()) for s in starts]
    optimizer = AdamWeightDecay(params, lr=0.05)
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
    for i, (p, start) in enumerate(zip(params, starts, strict=True)):
        want = official_update(start.tolist(), [g[i].tolist() for g in grads], 0.05)
        torch.testing.assert_close(p.detach(), torch.tensor(want, dtype=start.dtype))


def test_a_flagged_step_changes_nothing_and_an_unflagged_one_is_a_step():
    torch.manual_seed(0)
    start = torch.randn(6)
    grads = [torch.randn(6) for _ in range(3)]
    param = nn.Parameter(start.clone())
    optimizer = AdamWeightDecay([param], lr=0.1)
    param.grad = grads[0].clone()
    optimizer.step(found_inf=torch.tensor(0.0))
    before = (param.detach().clone(), {k: v.clone() for k, v in optimizer.state[param].items()})
    param.grad = torch.full((6,), float("nan"))  # what the flag is for
    optimizer.step(found_inf=torch.tensor(1.0))
    assert torch.equal(param.detach(), before[0])
    for key, value in optimizer.state[param].items():
        assert torch.equal(value, before[1][key]), key
    for g in grads[1:]:
        param.grad = g.clone()
        optimizer.step(found_inf=torch.tensor(0.0))
    want = official_update(start.tolist(), [g.tolist() for g in grads], 0.1)
    torch.testing.assert_close(param.detach(), torch.tensor(want))


def clip_by_global_norm(grads: list[list[float]], clip_norm: float) -> list[list[float]]:
    """tf.clip_by_global_norm, in float64: t * clip_norm / max(global_norm, clip_norm)."""
    global_norm = math.sqrt(sum(x * x for g in grads for x in g))
    return [[x * clip_norm / max(global_norm, clip_norm) for x in g] for g in grads]


@pytest.mark.parametrize("max_norm", [0.5, 1.0, 100.0])
def test_clipping_in_the_update_equals_the_official_clip_then_update(max_norm):
    """Two parameters of different dtypes share one global norm: the step divides every
    gradient by clip_divisor(grad_norm(), max_norm), as clip_by_global_norm scales them."""
    torch.manual_seed(0)
    starts = [torch.randn(3, dtype=torch.float64), torch.randn(4, dtype=torch.float32)]
    grads = [[torch.randn(s.shape, dtype=s.dtype) * 2 for s in starts] for _ in range(3)]
    params = [nn.Parameter(s.clone()) for s in starts]
    optimizer = AdamWeightDecay(params, lr=0.05)
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        norm = optimizer.grad_norm()
        want_norm = math.sqrt(sum(float(g.double().square().sum()) for g in step_grads))
        assert norm.dtype == torch.float32 and norm.item() == pytest.approx(want_norm, rel=1e-6)
        optimizer.step(grad_scale=clip_divisor(norm, max_norm))
    clipped = [clip_by_global_norm([g.tolist() for g in step], max_norm) for step in grads]
    for i, (p, start) in enumerate(zip(params, starts, strict=True)):
        want = official_update(start.tolist(), [step[i] for step in clipped], 0.05)
        torch.testing.assert_close(p.detach(), torch.tensor(want, dtype=start.dtype))


def test_grad_norm_and_clip_divisor_refuse_what_they_cannot_measure():
    optimizer = AdamWeightDecay([nn.Parameter(torch.ones(2))])
    with pytest.raises(ValueError, match="no parameter has a gradient"):
        optimizer.grad_norm()
    with pytest.raises(ValueError, match="max_norm must be positive, got 0"):
        clip_divisor(torch.tensor(1.0), 0.0)
    assert clip_divisor(torch.tensor(5.0), math.inf).item() == 1.0  # no clipping


def test_a_parameter_without_a_gradient_is_left_alone_and_later_updated():
    """Which parameters have gradients may change between steps."""
    torch.manual_seed(0)
    starts = [torch.randn(3), torch.randn(2)]
    grads = [torch.randn(3) for _ in range(3)], [torch.randn(2) for _ in range(3)]
    params = [nn.Parameter(s.clone()) for s in starts]
    optimizer = AdamWeightDecay(params, lr=0.1)
    given = [[0, 1, 2], [0, 2]]  # the second parameter has no gradient at step 1
    before = params[1].detach().clone()
    for step in range(3):
        for p, g, steps in zip(params, grads, given, strict=True):
            p.grad = g[step].clone() if step in steps else None
        optimizer.step()
        assert torch.equal(params[1].detach(), before) == (step == 1)
        before = params[1].detach().clone()
    for p, start, g, steps in zip(params, starts, grads, given, strict=True):
        want = official_update(start.tolist(), [g[i].tolist() for i in steps], 0.1)
        torch.testing.assert_close(p.detach(), torch.tensor(want))


def test_a_loaded_state_is_the_one_the_next_step_updates():
    """load_state_dict replaces the moments of an optimiser that has already stepped."""
    torch.manual_seed(0)
    grads = [torch.randn(4) for _ in range(3)]
    first = nn.Parameter(torch.randn(4))
    optimizer = AdamWeightDecay([first], lr=0.1)
    for g in grads[:2]:
        first.grad = g.clone()
        optimizer.step()
    second = nn.Parameter(torch.randn(4))
    other = AdamWeightDecay([second], lr=0.1)
    second.grad = torch.randn(4)
    other.step()  # moments of its own, which the load must replace
    with torch.no_grad():
        second.copy_(first)
    other.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as from a file: not shared
    for p, o in ((first, optimizer), (second, other)):
        p.grad = grads[2].clone()
        o.step()
    assert torch.equal(first.detach(), second.detach())
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(optimizer.state[first][key], other.state[second][key]), key


def test_the_state_dict_holds_the_two_moments_as_before():
    """Checkpoints of earlier versions load: the state is exp_avg and exp_avg_sq, no step."""
    param = nn.Parameter(torch.ones(2))
    optimizer = AdamWeightDecay([param])
    param.grad = torch.ones(2)
    optimizer.step()
    assert set(optimizer.state_dict()["state"][0]) == {"exp_avg", "exp_avg_sq"}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_update_on_a_gpu_equals_the_official_one():
    torch.manual_seed(0)
    start = torch.randn(1000, dtype=torch.float64)
    grads = [torch.randn(1000, dtype=torch.float64) for _ in range(3)]
    param = nn.Parameter(start.clone().cuda())
    optimizer = AdamWeightDecay([param], lr=0.01)
    for i, g in enumerate(grads):
        param.grad = g.clone().cuda()
        optimizer.step(found_inf=torch.tensor(float(i == 1), device="cuda"))
    kept = [g.tolist() for i, g in enumerate(grads) if i != 1]
    want = official_update(start.tolist(), kept, 0.01)
    torch.testing.assert_close(param.detach().cpu(), torch.tensor(want, dtype=torch.float64))
