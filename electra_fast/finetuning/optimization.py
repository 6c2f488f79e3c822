"""The official finetuning optimiser (model/optimization.py with layerwise_lr_decay_power):
the pretraining's Adam with decoupled weight decay, each parameter's learning rate scaled by
decay^(n_layers + 2 - depth), depth 0 for the embeddings (and their projection), i + 1 for
encoder layer i and n_layers + 2 for the task head, so the layers nearest the input move
least."""

from __future__ import annotations

import re

from torch import nn

from electra_fast.pretraining.optimization import parameter_groups

_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.")


def depth(name: str, n_layers: int) -> int:
    if name.startswith(("encoder.embeddings.", "encoder.embeddings_project.")):
        return 0
    match = _LAYER.match(name)
    if match:
        return int(match.group(1)) + 1
    if name.startswith("encoder."):
        raise ValueError(f"no depth for the encoder parameter {name}")
    return n_layers + 2


def layerwise_groups(model: nn.Module, weight_decay: float, decay: float) -> list[dict]:
    """Parameter groups for AdamWeightDecay, each with an `lr_scale` (1 for every parameter
    when decay is 0, the official "off")."""
    n_layers = model.config.num_hidden_layers
    names = {id(p): n for n, p in model.named_parameters()}
    groups = []
    for group in parameter_groups(model, weight_decay):
        by_scale: dict[float, list] = {}
        for parameter in group["params"]:
            d = depth(names[id(parameter)], n_layers)
            scale = decay ** (n_layers + 2 - d) if decay > 0 else 1.0
            by_scale.setdefault(scale, []).append(parameter)
        for scale, params in sorted(by_scale.items()):
            groups.append({"params": params, "weight_decay": group["weight_decay"],
                           "lr_scale": scale})  # fmt: skip
    return groups
