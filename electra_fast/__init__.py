"""electra_fast: fast, faithful ELECTRA pretraining and finetuning in PyTorch.

The names below are imported on first use, so that `import electra_fast.data.prepare` (in
every data worker) or the command line does not pay for torch and the kernels until it needs
them.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"
_EXPORTS = {
    "ElectraConfig": "electra_fast.model",
    "ElectraDiscriminator": "electra_fast.model",
    "ElectraForPretraining": "electra_fast.model",
    "ElectraGenerator": "electra_fast.model",
    "DiscriminatorInputs": "electra_fast.ops",
    "GeneratorStep": "electra_fast.ops",
    "MaskedTokens": "electra_fast.ops",
    "attention": "electra_fast.ops",
    "build_discriminator_inputs": "electra_fast.ops",
    "generator_step": "electra_fast.ops",
    "generator_step_linear": "electra_fast.ops",
    "mask_tokens": "electra_fast.ops",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'electra_fast' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
