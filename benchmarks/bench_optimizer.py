"""The optimiser step on ELECTRA-small's parameters (generator and discriminator, vocabulary
30,522): ours (torch's fused AdamW kernel with the bias correction made exactly 1, which is the
official update) against torch's AdamW as most loops run it, with foreach ops and fused. The
torch rows do the same work with a bias correction; they are timed, not compared for values.

Mode `clip+adam` adds global-norm clipping at 1.0 as the pretraining loop does it: ours measures
the norm (`grad_norm`) and lets the kernel divide the gradients (`grad_scale`); the torch rows
call `torch.nn.utils.clip_grad_norm_` first, which rescales the gradients in a pass of its own.
"""

import pytest
import torch

from benchmarks.conftest import describe, synchronised
from electra_fast.model import ElectraConfig, ElectraForPretraining
from electra_fast.pretraining.optimization import AdamWeightDecay, clip_divisor, parameter_groups

PROVIDERS = ["electra_fast", "torch_adamw_foreach", "torch_adamw_fused"]


def optimizer(provider: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    groups = parameter_groups(model, 0.01)
    if provider == "electra_fast":
        return AdamWeightDecay(groups, lr=1e-4)
    fused = provider == "torch_adamw_fused"
    return torch.optim.AdamW(groups, lr=1e-4, eps=1e-6, foreach=not fused, fused=fused)


def clipped_step(provider: str, model: torch.nn.Module, adam: torch.optim.Optimizer):
    if provider == "electra_fast":
        return lambda: adam.step(grad_scale=clip_divisor(adam.grad_norm(), 1.0))

    def step():
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        adam.step()

    return step


@pytest.mark.parametrize("mode", ["adam", "clip+adam"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_optimizer_step(benchmark, device, provider, mode):
    config = ElectraConfig.preset("small", vocab_size=30522)
    model = ElectraForPretraining(config).to(device)
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter) * 1e-3
    adam = optimizer(provider, model)
    adam.step()  # allocates the moments
    count = sum(p.numel() for p in model.parameters())
    describe(benchmark, op="optimizer_step", provider=provider, mode=mode,
             size=f"ELECTRA-small, {count / 1e6:.1f}M parameters", device=device)  # fmt: skip
    step = adam.step if mode == "adam" else clipped_step(provider, model, adam)
    benchmark(synchronised(step, device))
    assert all(torch.isfinite(p).all() for p in model.parameters())
