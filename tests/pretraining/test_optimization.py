"""The optimiser against a hand-written official update, the schedule's values, the
parameter groups."""

import math

import pytest
import torch
from torch import nn

from electra_fast.pretraining.optimization import (
    AdamWeightDecay,
    learning_rate,
    parameter_groups,
)


def official_update(param, grads, lr, b1=0.9, b2=0.999, eps=1e-6, wd=0.01):
    """AdamWeightDecayOptimizer.apply_gradients, element by element, in float64."""
    p = [float(x) for x in param]
    m = [0.0] * len(p)
    v = [0.0] * len(p)
    for g in grads:
        for i, gi in enumerate(g):
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi * gi
            update = m[i] / (math.sqrt(v[i]) + eps) + wd * p[i]
            p[i] = p[i] - lr * update
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


def test_bad_settings():
    with pytest.raises(ValueError, match="eps"):
        AdamWeightDecay([nn.Parameter(torch.zeros(1))], eps=0.0)


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
