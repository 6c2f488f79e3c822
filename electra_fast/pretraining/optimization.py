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

    A group's `lr` may be a 0-d float32 tensor (on the parameters' device, or the CPU) instead
    of a float: the kernel then reads the rate from it when it runs, so that a step recorded as
    a CUDA graph follows a schedule that changes the tensor between replays.
    """

    def __init__(self, params, lr=5e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01):
        if isinstance(lr, torch.Tensor) and (lr.dim() != 0 or lr.dtype != torch.float32):
            raise ValueError(f"a tensor lr must be 0-d float32, got {lr.dtype} {tuple(lr.shape)}")
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self._infinite_steps: dict[torch.device, torch.Tensor] = {}
        self._cached_buckets = None

    @torch.no_grad()
    def grad_norm(self) -> torch.Tensor:
        """The L2 norm of all the gradients together, as tf.clip_by_global_norm measures it: a
        0-d float32 tensor on the first parameter's device, computed there (one foreach pass per
        device and dtype), never read by the host."""
        buckets: dict[tuple, list[torch.Tensor]] = {}
        for group in self._buckets():
            for bucket in group:
                buckets.setdefault(bucket.key, []).extend(bucket.grads())
        if not buckets:
            raise ValueError("no parameter has a gradient: call backward() before grad_norm()")
        norms = [
            torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).float()
            for grads in buckets.values()
        ]
        if len(norms) == 1:
            return norms[0]
        return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))

    @torch.no_grad()
    def step(
        self,
        closure=None,
        *,
        found_inf: torch.Tensor | None = None,
        grad_scale: torch.Tensor | None = None,
    ):
        """One update. `found_inf`: see the class. `grad_scale`, a 0-d float32 tensor: every
        gradient is divided by it as the kernel reads it (and written back so), which is how
        global-norm clipping costs no pass of its own: grad_scale=clip_divisor(norm, max)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group, buckets in zip(self.param_groups, self._buckets(), strict=True):
            beta1, beta2 = group["betas"]
            lr = group["lr"]
            for bucket in buckets:
                device = bucket.key[0]
                torch._fused_adamw_(
                    bucket.params,
                    bucket.grads(),
                    bucket.exp_avgs,
                    bucket.exp_avg_sqs,
                    [],  # no AMSGrad
                    [self._infinite_step(device)] * len(bucket.params),
                    lr=_on(lr, device) if isinstance(lr, torch.Tensor) else lr,
                    beta1=beta1,
                    beta2=beta2,
                    weight_decay=group["weight_decay"],
                    eps=group["eps"],
                    amsgrad=False,
                    maximize=False,
                    grad_scale=_on(grad_scale, device),
                    found_inf=_on(found_inf, device),
                )
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._cached_buckets = None  # the moments are new tensors

    def _buckets(self) -> list[list[_Bucket]]:
        """Per parameter group, its parameters that have a gradient, by (device, dtype) (the
        fused kernel and _foreach_norm take one of each at a time), with their moments
        (allocated here the first time). The sort, a Python loop over every parameter at every
        step otherwise, is kept while every parameter of the last sort still has a gradient
        and the groups are the same lists."""
        groups = [group["params"] for group in self.param_groups]
        cached = self._cached_buckets
        if (
            cached is not None
            and len(cached[0]) == len(groups)
            and all(a is b and len(a) == n for a, (b, n) in zip(groups, cached[0], strict=True))
            and all(p.grad is not None for params in groups for p in params)
        ):
            return cached[1]
        buckets = []
        for params in groups:
            sorted_params: dict[tuple, list[torch.Tensor]] = {}
            for p in params:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError("AdamWeightDecay does not take sparse gradients")
                sorted_params.setdefault((p.device, p.dtype), []).append(p)
            buckets.append([_Bucket(key, ps, self.state) for key, ps in sorted_params.items()])
        complete = all(p.grad is not None for params in groups for p in params)
        self._cached_buckets = ([(g, len(g)) for g in groups], buckets) if complete else None
        return buckets

    def _infinite_step(self, device: torch.device) -> torch.Tensor:
        """The step count the kernel reads (and never writes): +inf, for no bias correction."""
        if device not in self._infinite_steps:
            self._infinite_steps[device] = torch.tensor(math.inf, device=device)
        return self._infinite_steps[device]


class _Bucket:
    """Parameters of one group, device and dtype, and their moments, as the kernel takes them."""

    def __init__(self, key: tuple, params: list[torch.Tensor], state: dict):
        self.key, self.params = key, params
        for p in params:
            if not state[p]:
                state[p]["exp_avg"] = torch.zeros_like(p)
                state[p]["exp_avg_sq"] = torch.zeros_like(p)
        self.exp_avgs = [state[p]["exp_avg"] for p in params]
        self.exp_avg_sqs = [state[p]["exp_avg_sq"] for p in params]

    def grads(self) -> list[torch.Tensor]:
        return [p.grad for p in self.params]


def _on(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device)


def clip_divisor(grad_norm: torch.Tensor, max_norm: float) -> torch.Tensor:
    """What tf.clip_by_global_norm divides the gradients by, max(norm / max_norm, 1) (it
    multiplies by max_norm / max(norm, max_norm)): the `grad_scale` of AdamWeightDecay.step.
    Unlike torch's clip_grad_norm_, no 1e-6 is added to the norm."""
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    return torch.clamp(grad_norm / max_norm, min=1.0)


def learning_rate(step: int, base: float, warmup_steps: int, total_steps: int) -> float:
    """The official schedule at `step` (0-based: the rate used for the update of step + 1
    is learning_rate(step))."""
    decay = 1.0 - min(step, total_steps) / total_steps
    warmup = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
    return base * decay * warmup
