"""The tiny encoder the finetuning tests train."""

from electra_fast import ElectraConfig


def tiny_config(**overrides) -> ElectraConfig:
    fields = dict(vocab_size=205, hidden_size=64, num_attention_heads=2, intermediate_size=128,
                  num_hidden_layers=2, embedding_size=64)  # fmt: skip
    return ElectraConfig.preset("small", **{**fields, **overrides})
