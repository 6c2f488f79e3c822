"""Finetuning a pretrained discriminator on classification, regression, SQuAD-style question
answering and tagging with the official recipe: `finetune()` or `electra-fast finetune`."""

from electra_fast.finetuning.hparams import FinetuneHparams
from electra_fast.finetuning.trainer import finetune

__all__ = ["FinetuneHparams", "finetune"]
