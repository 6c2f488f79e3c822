"""electra_fast: fast, faithful ELECTRA pretraining and finetuning in PyTorch."""

from electra_fast import _extension  # noqa: F401  (loads the compiled kernels, or warns why not)
from electra_fast.model import (
    ElectraConfig,
    ElectraDiscriminator,
    ElectraForPretraining,
    ElectraGenerator,
)
from electra_fast.ops import (
    DiscriminatorInputs,
    GeneratorStep,
    MaskedTokens,
    attention,
    build_discriminator_inputs,
    generator_step,
    generator_step_linear,
    mask_tokens,
)

__version__ = "0.1.0"
__all__ = [
    "ElectraConfig",
    "ElectraDiscriminator",
    "ElectraForPretraining",
    "ElectraGenerator",
    "attention",
    "DiscriminatorInputs",
    "GeneratorStep",
    "MaskedTokens",
    "build_discriminator_inputs",
    "generator_step",
    "generator_step_linear",
    "mask_tokens",
]
