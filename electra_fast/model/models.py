"""The discriminator and the generator as stand-alone models that read and write Hugging Face
checkpoint directories (config.json + model.safetensors)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from electra_fast.model import hf
from electra_fast.model.config import ElectraConfig
from electra_fast.model.modeling import (
    DiscriminatorHead,
    Embeddings,
    Encoder,
    GeneratorHead,
    init_weights,
)


class PretrainedModel(nn.Module):
    """save_pretrained / from_pretrained in Hugging Face's layout and parameter names."""

    architecture = ""

    def __init__(self, config: ElectraConfig):
        super().__init__()
        self.config = config

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        hf.write_weights(directory, hf.to_hf(self.state_dict()))
        # Last: a config.json means a whole checkpoint.
        self.config.save(directory, self.architecture, self.config_extra())

    def config_extra(self) -> dict:
        """Keys besides the encoder's that config.json needs to rebuild this model."""
        return {}

    @classmethod
    def init_arguments(cls, config_json: dict) -> dict:
        """The constructor's arguments besides the config, from config.json."""
        return {}

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides):
        """Loads a checkpoint directory (ours or Hugging Face's); `overrides` replace config
        fields (for example dropout or `unpad`)."""
        directory = Path(directory)
        config = with_overrides(ElectraConfig.load(directory), overrides)
        arguments = cls.init_arguments(json.loads((directory / "config.json").read_text()))
        model = cls(config, **arguments)
        model.load_hf_state_dict(hf.read_weights(directory), source=str(directory))
        return model

    def load_hf_state_dict(self, state: dict[str, torch.Tensor], source: str = "") -> None:
        """Loads Hugging Face-named weights; any parameter missing, left over or of the wrong
        shape is an error that lists them all."""
        converted, unused = hf.from_hf(state)
        own = self.state_dict()
        missing = sorted(set(own) - set(converted))
        unexpected = [_hf_name(n) for n in sorted(set(converted) - set(own))] + unused
        wrong = [
            f"{name} {tuple(t.shape)} (model: {tuple(own[name].shape)})"
            for name, t in converted.items()
            if name in own and t.shape != own[name].shape
        ]
        if missing or unexpected or wrong:
            where = f" at {source}" if source else ""
            raise ValueError(
                f"the checkpoint{where} does not fit {type(self).__name__}: "
                f"missing {[_hf_name(n) for n in missing]}, unexpected {unexpected}, "
                f"wrong shape {wrong}"
            )
        self.load_state_dict(converted)


def with_overrides(config: ElectraConfig, overrides: dict) -> ElectraConfig:
    """`config` with some fields replaced (validated again)."""
    return ElectraConfig(**{**config.__dict__, **overrides}) if overrides else config


def _hf_name(ours: str) -> str:
    try:
        return next(iter(hf.to_hf({ours: torch.zeros(3)})))
    except KeyError:
        return ours


class ElectraDiscriminator(PretrainedModel):
    """The discriminator: one replaced-token logit per position (ElectraForPreTraining)."""

    architecture = "ElectraForPreTraining"

    def __init__(self, config: ElectraConfig, embeddings: Embeddings | None = None):
        super().__init__(config)
        self.encoder = Encoder(config, embeddings)
        self.discriminator_head = DiscriminatorHead(config)
        init_weights(self, config.initializer_range)

    def forward(
        self, input_ids, attention_mask=None, token_type_ids=None, check_values=True
    ) -> torch.Tensor:
        """[B, L] logits that each token was replaced."""
        hidden = self.encoder(input_ids, attention_mask, token_type_ids, check_values)
        return self.discriminator_head(hidden)


class ElectraGenerator(PretrainedModel):
    """The generator: a masked language model whose output layer is the word embeddings
    (ElectraForMaskedLM)."""

    architecture = "ElectraForMaskedLM"

    def __init__(self, config: ElectraConfig, embeddings: Embeddings | None = None):
        super().__init__(config)
        self.encoder = Encoder(config, embeddings)
        self.generator_head = GeneratorHead(config)
        init_weights(self, config.initializer_range)

    @property
    def output_weight(self) -> torch.Tensor:
        """[V, E]: the output layer, tied to the word embeddings."""
        return self.encoder.embeddings.word.weight

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """[B, L, V] logits over the vocabulary at every position."""
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)
        return self.generator_head(hidden, self.output_weight)

    def masked_hidden(
        self, input_ids, attention_mask, token_type_ids, positions, check_values=True
    ) -> torch.Tensor:
        """[B * N, E]: the output layer's input at `positions` [B, N] only, for the fused step."""
        hidden = self.encoder(input_ids, attention_mask, token_type_ids, check_values)
        index = positions[:, :, None].expand(-1, -1, hidden.shape[-1])
        return self.generator_head.hidden(hidden.gather(1, index)).flatten(0, 1)
