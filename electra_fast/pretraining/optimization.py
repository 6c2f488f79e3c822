"""ELECTRA's optimisation (model/optimization.py): Adam with decoupled weight decay and no bias
correction (AdamWeightDecayOptimizer), global-norm clipping, and a linear warmup multiplied by a
linear decay to 0 (the two overlap: lr = base * (1 - step / total) * min(1, step / warmup))."""

from __future__ import annotations

import torch
from torch import nn


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay for every parameter but LayerNorm weights and biases (the official
    exclusions; our LayerNorms are modules whose name ends in `norm`)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        module_name, _, leaf = name.rpartition(".")
        excluded = leaf == "bias" or module_name.rsplit(".", 1)[-1].endswith("norm")
        (no_decay if excluded else decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class AdamWeightDecay(torch.optim.Optimizer):
    """m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; p -= lr (m / (sqrt(v) + eps) + wd p).

    No bias correction, as the official optimiser. The update runs on whole lists of tensors
    (torch._foreach_*): a handful of kernel launches per step, not a Python loop per parameter.
    """

    def __init__(self, params, lr=5e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01):
        if lr < 0 or eps <= 0 or not all(0 <= b < 1 for b in betas) or weight_decay < 0:
            raise ValueError(
                f"bad Adam settings: lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}"
            )
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            for p in params:
                if not self.state[p]:
                    self.state[p]["exp_avg"] = torch.zeros_like(p)
                    self.state[p]["exp_avg_sq"] = torch.zeros_like(p)
            m = [self.state[p]["exp_avg"] for p in params]
            v = [self.state[p]["exp_avg_sq"] for p in params]
            beta1, beta2 = group["betas"]
            torch._foreach_lerp_(m, grads, 1 - beta1)  # m + (1 - b1)(g - m)
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
            denominator = torch._foreach_sqrt(v)
            torch._foreach_add_(denominator, group["eps"])
            update = torch._foreach_div(m, denominator)
            if group["weight_decay"]:
                torch._foreach_add_(update, params, alpha=group["weight_decay"])
            torch._foreach_add_(params, update, alpha=-group["lr"])
        return loss


def learning_rate(step: int, base: float, warmup_steps: int, total_steps: int) -> float:
    """The official schedule at `step` (0-based: the rate used for the update of step + 1
    is learning_rate(step))."""
    decay = 1.0 - min(step, total_steps) / total_steps
    warmup = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
    return base * decay * warmup
