"""ELECTRA's models: configuration, encoder, generator, discriminator, Hugging Face interop."""

from electra_fast.model.config import ElectraConfig
from electra_fast.model.finetuning import (
    ElectraForQuestionAnswering,
    ElectraForSequenceClassification,
    ElectraForTokenClassification,
)
from electra_fast.model.modeling import set_gradient_checkpointing
from electra_fast.model.models import ElectraDiscriminator, ElectraGenerator
from electra_fast.model.pretraining import ElectraForPretraining, PretrainingOutput

__all__ = [
    "ElectraConfig",
    "ElectraDiscriminator",
    "ElectraForPretraining",
    "ElectraForQuestionAnswering",
    "ElectraForSequenceClassification",
    "ElectraForTokenClassification",
    "ElectraGenerator",
    "PretrainingOutput",
    "set_gradient_checkpointing",
]
