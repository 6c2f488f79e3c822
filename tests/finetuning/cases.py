"""The tiny encoder the finetuning tests train."""

import torch

from electra_fast import ElectraConfig, ElectraDiscriminator
from tests.data.corpus_cases import wordpiece


def tiny_config(**overrides) -> ElectraConfig:
    fields = dict(vocab_size=205, hidden_size=64, num_attention_heads=2, intermediate_size=128,
                  num_hidden_layers=2, embedding_size=64)  # fmt: skip
    return ElectraConfig.preset("small", **{**fields, **overrides})


def pretrained_discriminator(root, **overrides):
    """(discriminator directory, tokenizer directory) of a freshly initialised tiny model
    under `root`, always the same one for the same overrides."""
    tokenizer = wordpiece(root / "tokenizer")
    torch.manual_seed(0)
    ElectraDiscriminator(tiny_config(**overrides)).save_pretrained(root / "discriminator")
    return root / "discriminator", tokenizer
