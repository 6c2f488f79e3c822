"""ELECTRA's optimisation (model/optimization.py): Adam with decoupled weight decay and no bias
correction (AdamWeightDecayOptimizer), global-norm clipping, and a linear warmup multiplied by a
linear decay to 0 (the two overlap: lr = base * (1 - step / total) * min(1, step / warmup))."""

from __future__ import annotations

import math

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

    No bias correction, as the official optimiser. The update is torch's fused AdamW kernel (CPU
    and CUDA: one pass over parameters, gradients and moments) with a step count of +inf, at
    which its bias corrections 1 - b^t are exactly 1. `step(found_inf=flag)` leaves parameters
    and moments as they were when the 0-d float32 `flag` on the parameters' device holds 1.0:
    a step is skipped without the host reading the flag.
    """

    def __init__(self, params, lr=5e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01):
        if lr < 0 or eps <= 0 or not all(0 <= b < 1 for b in betas) or weight_decay < 0:
            raise ValueError(
                f"bad Adam settings: lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}"
            )
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self._infinite_steps: dict[torch.device, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, closure=None, *, found_inf: torch.Tensor | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # The fused kernel takes tensors of one device and one dtype at a time.
            lists: dict[tuple, list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError("AdamWeightDecay does not take sparse gradients")
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                lists.setdefault((p.device, p.dtype), []).append(p)
            beta1, beta2 = group["betas"]
            for (device, _), params in lists.items():
                torch._fused_adamw_(
                    params,
                    [p.grad for p in params],
                    [self.state[p]["exp_avg"] for p in params],
                    [self.state[p]["exp_avg_sq"] for p in params],
                    [],  # no AMSGrad
                    [self._infinite_step(device)] * len(params),
                    lr=group["lr"],
                    beta1=beta1,
                    beta2=beta2,
                    weight_decay=group["weight_decay"],
                    eps=group["eps"],
                    amsgrad=False,
                    maximize=False,
                    found_inf=None if found_inf is None else found_inf.to(device),
                )
        return loss

    def _infinite_step(self, device: torch.device) -> torch.Tensor:
        """The step count the kernel reads (and never writes): +inf, for no bias correction."""
        if device not in self._infinite_steps:
            self._infinite_steps[device] = torch.tensor(math.inf, device=device)
        return self._infinite_steps[device]


def learning_rate(step: int, base: float, warmup_steps: int, total_steps: int) -> float:
    """The official schedule at `step` (0-based: the rate used for the update of step + 1
    is learning_rate(step))."""
    decay = 1.0 - min(step, total_steps) / total_steps
    warmup = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
    return base * decay * warmup
