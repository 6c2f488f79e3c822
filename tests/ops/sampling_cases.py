"""Inputs and calls shared by the generator_step tests."""

import torch

IGNORE = -100


def step_inputs(M, V, *, device="cpu", dtype=torch.float32, seed=0, ignored=0.2, scale=3.0):
    """logits [M, V] ~ scale * N(0, 1) and labels [M] with a fraction `ignored` of IGNORE."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(M, V, generator=g, dtype=torch.float64) * scale).to(dtype)
    labels = torch.randint(0, V, (M,), generator=g)
    labels[torch.rand(M, generator=g) < ignored] = IGNORE
    return logits.to(device), labels.to(device)


def raw_step(library, logits, labels, *, seed=0, temperature=1.0, disallow=False, row_offset=0):
    """(loss, samples, lse) from torch.ops.<library>.generator_step with an explicit key."""
    key = torch.tensor(seed, dtype=torch.int64, device=logits.device)
    op = getattr(torch.ops, library).generator_step.default
    return op(logits, labels, key, temperature, disallow, IGNORE, False, row_offset)
