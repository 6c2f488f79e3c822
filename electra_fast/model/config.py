"""ElectraConfig: one encoder's sizes (Hugging Face's `config.json` fields) plus the pretraining
settings of google-research/electra's `configure_pretraining.py`."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from electra_fast._checks import check_range
from electra_fast._files import write_atomically

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
# Fields of a Hugging Face ElectraConfig that we read and write; the rest are ours.
HF_FIELDS = (
    "vocab_size",
    "embedding_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
    "pad_token_id",
)
PRESETS = {  # hidden, layers, heads, FFN, embedding size (ELECTRA paper, table 6)
    "small": (256, 12, 4, 1024, 128),
    "base": (768, 12, 12, 3072, 768),
    "large": (1024, 24, 16, 4096, 1024),
}


@dataclasses.dataclass
class ElectraConfig:
    vocab_size: int = 30522
    embedding_size: int = 768
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    # Pretraining (configure_pretraining.py): the generator's size as fractions of this
    # encoder's, the shared embeddings, the loss weights and the masking.
    generator_hidden_size: float = 0.25
    generator_layers: float = 1.0
    untied_generator_embeddings: bool = False
    gen_weight: float = 1.0
    disc_weight: float = 50.0
    mask_prob: float = 0.15
    temperature: float = 1.0
    disallow_correct: bool = False
    mask_token_id: int = 103
    special_token_ids: tuple[int, ...] = (0, 100, 101, 102)  # [PAD] [UNK] [CLS] [SEP]
    # Run the encoder on packed tokens when a batch has padding (attention with cu_seqlens).
    unpad: bool = False

    def __post_init__(self):
        self.special_token_ids = tuple(int(i) for i in self.special_token_ids)
        check_range(
            self,
            "positive",
            "vocab_size",
            "embedding_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be a multiple of "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {ACTIVATIONS}, got {self.hidden_act!r}")
        check_range(self, "in [0, 1)", "hidden_dropout_prob", "attention_probs_dropout_prob")
        check_range(self, "positive and finite", "layer_norm_eps", "temperature")
        check_range(self, ">= 0", "initializer_range", "gen_weight", "disc_weight")
        # Fractions of this encoder's width and depth, as officially.
        check_range(self, "in (0, 1]", "generator_hidden_size", "generator_layers", "mask_prob")

    @classmethod
    def preset(cls, size: str, **overrides) -> ElectraConfig:
        """The paper's small, base or large discriminator (base's generator is 1/3 its size)."""
        if size not in PRESETS:
            raise ValueError(f"size must be one of {sorted(PRESETS)}, got {size!r}")
        hidden, layers, heads, ffn, embedding = PRESETS[size]
        fields = dict(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=ffn,
            embedding_size=embedding,
            generator_hidden_size=1 / 3 if size == "base" else 0.25,
        )
        return cls(**{**fields, **overrides})

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def generator_config(self) -> ElectraConfig:
        """The generator's encoder, sized as officially: hidden = round(H * fraction), heads =
        max(1, hidden // 64), FFN = 4 * hidden; the same embedding size (it shares them)."""
        hidden = round(self.hidden_size * self.generator_hidden_size)
        heads = max(1, hidden // 64)
        if hidden % heads:
            raise ValueError(
                f"the generator's hidden size {hidden} does not split into {heads} heads"
            )
        return dataclasses.replace(
            self,
            hidden_size=hidden,
            num_attention_heads=heads,
            intermediate_size=4 * hidden,
            num_hidden_layers=max(1, round(self.num_hidden_layers * self.generator_layers)),
            generator_hidden_size=1.0,
            generator_layers=1.0,
        )

    # Hugging Face config.json ---------------------------------------------------------------

    def to_hf_dict(self, architecture: str) -> dict:
        fields = {name: getattr(self, name) for name in HF_FIELDS}
        extra = {  # our pretraining settings, kept beside the fields transformers reads
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in HF_FIELDS
        }
        extra["special_token_ids"] = list(self.special_token_ids)
        return {
            "architectures": [architecture],
            "model_type": "electra",
            **fields,
            "electra_fast": extra,
        }

    @classmethod
    def from_hf_dict(cls, data: dict) -> ElectraConfig:
        """From a Hugging Face (or original ELECTRA release) config dict; unknown keys are
        ignored, an embedding size defaults to the hidden size as in BERT-style configs."""
        if data.get("model_type", "electra") != "electra":
            raise ValueError(f"config model_type must be 'electra', got {data['model_type']!r}")
        fields = {name: data[name] for name in HF_FIELDS if name in data}
        fields.setdefault("embedding_size", fields.get("hidden_size", cls.embedding_size))
        ours = data.get("electra_fast", {})
        fields.update(
            {k: v for k, v in ours.items() if k in {f.name for f in dataclasses.fields(cls)}}
        )
        return cls(**fields)

    def save(self, directory: str | os.PathLike, architecture: str, extra: dict | None = None):
        """config.json; `extra` adds top-level keys (a finetuned model's labels)."""
        data = {**self.to_hf_dict(architecture), **(extra or {})}
        write_atomically(Path(directory) / "config.json", json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> ElectraConfig:
        """From a config file, or a directory holding config.json."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no config file at {path}")
        return cls.from_hf_dict(json.loads(path.read_text()))
