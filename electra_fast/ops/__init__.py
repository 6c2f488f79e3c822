"""electra_fast's ops: one module per op, each with its compiled kernels and torch reference."""

from electra_fast._extension import OP_NAMES
from electra_fast.ops.attention import attention, attention_qkvpacked
from electra_fast.ops.bias_gelu import bias_gelu
from electra_fast.ops.column_sums import column_sums
from electra_fast.ops.layer_norm import dropout_add_layer_norm
from electra_fast.ops.masking import MaskedTokens, mask_tokens, mask_tokens_reference
from electra_fast.ops.sampling import (
    DiscriminatorInputs,
    GeneratorStep,
    build_discriminator_inputs,
    generator_step,
    generator_step_reference,
)
from electra_fast.ops.sampling_linear import generator_step_linear

__all__ = [
    "OP_NAMES",
    "attention",
    "attention_qkvpacked",
    "bias_gelu",
    "column_sums",
    "DiscriminatorInputs",
    "GeneratorStep",
    "MaskedTokens",
    "build_discriminator_inputs",
    "dropout_add_layer_norm",
    "generator_step",
    "generator_step_linear",
    "generator_step_reference",
    "mask_tokens",
    "mask_tokens_reference",
]
