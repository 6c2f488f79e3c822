"""electra_fast: fast, faithful ELECTRA pretraining and finetuning in PyTorch.

The names below are imported on first use, so that `import electra_fast.data.prepare` (in
every data worker) or the command line does not pay for torch and the kernels until it needs
them.
"""

from __future__ import annotations

from electra_fast._lazy import lazy_getattr

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
    "attention_qkvpacked": "electra_fast.ops",
    "bias_gelu": "electra_fast.ops",
    "build_discriminator_inputs": "electra_fast.ops",
    "column_sums": "electra_fast.ops",
    "dropout_add_layer_norm": "electra_fast.ops",
    "generator_step": "electra_fast.ops",
    "generator_step_linear": "electra_fast.ops",
    "mask_tokens": "electra_fast.ops",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)


def __dir__():
    return sorted(list(globals()) + __all__)
