"""The optimiser step on ELECTRA-small's parameters (generator and discriminator, vocabulary
30,522): ours (torch's fused AdamW kernel with the bias correction made exactly 1, which is the
official update) against torch's AdamW as most loops run it, with foreach ops and fused. The
torch rows do the same work with a bias correction; they are timed, not compared for values.
"""

import pytest
import torch

from benchmarks.conftest import describe, synchronised
from electra_fast.model import ElectraConfig, ElectraForPretraining
from electra_fast.pretraining.optimization import AdamWeightDecay, parameter_groups

PROVIDERS = ["electra_fast", "torch_adamw_foreach", "torch_adamw_fused"]


def optimizer(provider: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    groups = parameter_groups(model, 0.01)
    if provider == "electra_fast":
        return AdamWeightDecay(groups, lr=1e-4)
    fused = provider == "torch_adamw_fused"
    return torch.optim.AdamW(groups, lr=1e-4, eps=1e-6, foreach=not fused, fused=fused)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_optimizer_step(benchmark, device, provider):
    config = ElectraConfig.preset("small", vocab_size=30522)
    model = ElectraForPretraining(config).to(device)
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter) * 1e-3
    adam = optimizer(provider, model)
    adam.step()  # allocates the moments
    count = sum(p.numel() for p in model.parameters())
    describe(benchmark, op="optimizer_step", provider=provider, mode="adam",
             size=f"ELECTRA-small, {count / 1e6:.1f}M parameters", device=device)  # fmt: skip
    benchmark(synchronised(adam.step, device))
    assert all(torch.isfinite(p).all() for p in model.parameters())
