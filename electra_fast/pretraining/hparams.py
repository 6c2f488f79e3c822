"""Pretraining hyper-parameters with the official names (configure_pretraining.py), the
model-size presets, and their validation."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

from electra_fast import amp
from electra_fast._checks import check_range

PRESETS = {  # configure_pretraining.py and the paper's table 6
    "small": dict(learning_rate=5e-4, train_batch_size=128, max_seq_length=128,
                  mask_prob=0.15, generator_hidden_size=0.25),
    "base": dict(learning_rate=2e-4, train_batch_size=256, max_seq_length=512,
                 mask_prob=0.15, generator_hidden_size=1 / 3),
    "large": dict(learning_rate=2e-4, train_batch_size=2048, max_seq_length=512,
                  mask_prob=0.25, generator_hidden_size=0.25),
}  # fmt: skip


def read_json_object(text_or_path: str | None, argument: str = "--hparams") -> dict:
    """A JSON object given inline or as the path of a file holding one ({} for None)."""
    if not text_or_path:
        return {}
    text = text_or_path
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise ValueError(f"{argument} is neither a JSON object nor a file: {text!r}")
        text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{argument} is neither a JSON object nor a file: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"hparams must be a JSON object, got {type(data).__name__}")
    return data


def check_keys(data: dict, cls) -> None:
    """An unknown key is an error that names it and lists the known ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown hparams {unknown}; known: {sorted(known)}")


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
               dict: "a JSON object", type(None): "null"}  # fmt: skip


def check_types(hparams) -> None:
    """Each field of the dataclass `hparams` holds its annotated type (JSON's numbers, strings,
    booleans, objects or null): a mistyped value is an error that names the key, not a crash
    later or a string taken as true. An integer is taken (as a float) where a number is."""
    hints = typing.get_type_hints(type(hparams))
    for field in dataclasses.fields(hparams):
        name = field.name
        setattr(hparams, name, typed_value(name, getattr(hparams, name), hints[name]))


def typed_value(name: str, value, wanted):
    """`value` as the annotated type `wanted` (an int as a float where a number is wanted, a
    list as a tuple of integers), or an error naming `name`."""
    if typing.get_origin(wanted) is tuple:  # tuple[int, ...]
        if isinstance(value, (list, tuple)) and all(
            isinstance(x, int) and not isinstance(x, bool) for x in value
        ):
            return tuple(value)
        raise ValueError(f"hparams {name} must be a list of integers, got {value!r}")
    allowed = typing.get_args(wanted) or (wanted,)  # int | None: (int, NoneType)
    if float in allowed and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if any(
        isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        for kind in allowed
    ):
        return value
    names = " or ".join(_TYPE_NAMES.get(kind, kind.__name__) for kind in allowed)
    raise ValueError(f"hparams {name} must be {names}, got {value!r}")


@dataclasses.dataclass
class Hparams:
    model_size: str = "small"
    vocab_size: int | None = None  # default: the dataset's tokenizer
    max_seq_length: int = 128
    train_batch_size: int = 128  # the global batch: per device x accumulation x world size
    gradient_accumulation_steps: int = 1
    num_train_steps: int = 1_000_000
    num_warmup_steps: int = 10_000
    learning_rate: float = 5e-4
    weight_decay_rate: float = 0.01
    adam_epsilon: float = 1e-6
    max_grad_norm: float = 1.0
    mask_prob: float = 0.15
    generator_hidden_size: float = 0.25
    generator_layers: float = 1.0
    gen_weight: float = 1.0
    disc_weight: float = 50.0
    temperature: float = 1.0
    disallow_correct: bool = False
    untied_generator_embeddings: bool = False
    embedding_size: int | None = None
    model_hparam_overrides: dict = dataclasses.field(default_factory=dict)
    save_checkpoints_steps: int = 1000
    keep_checkpoint_max: int = 5
    iterations_per_loop: int = 100  # log every this many steps
    precision: str = "auto"  # fp32, bf16, fp16; auto: electra_fast.amp.resolve
    compile: bool = False
    # Each step replayed from CUDA graphs (pretraining/step.py): one GPU, not with compile.
    cuda_graphs: bool = False
    # Keep each encoder layer's input alone and run its forward again in the backward: less
    # activation memory (a larger batch per device) for about a third more compute.
    gradient_checkpointing: bool = False
    seed: int = 0
    max_consecutive_nonfinite: int = 10
    # A directory with discriminator/ and generator/ (a run's export, or convert-tf's output)
    # whose weights a new run starts from, with a fresh optimizer at step 0: continued
    # pretraining. Its sizes must be the ones these hparams describe. A resume ignores it.
    init_checkpoint: str | None = None

    @classmethod
    def from_json(cls, text_or_path: str | None) -> Hparams:
        """From a JSON object or a path to a JSON file, official keys; the model size's preset
        fills what is not given. An unknown key is an error that names it."""
        data = read_json_object(text_or_path)
        check_keys(data, cls)
        size = data.get("model_size", "small")
        if size not in PRESETS:
            raise ValueError(f"model_size must be one of {sorted(PRESETS)}, got {size!r}")
        return cls(**{**PRESETS[size], **data})

    def __post_init__(self):
        check_types(self)
        check_range(self, "positive", "train_batch_size", "num_train_steps",
                    "gradient_accumulation_steps", "max_seq_length", "save_checkpoints_steps",
                    "keep_checkpoint_max", "iterations_per_loop", "max_consecutive_nonfinite",
                    "max_grad_norm")  # fmt: skip
        check_range(self, "positive and finite", "learning_rate", "adam_epsilon")
        check_range(self, ">= 0", "num_warmup_steps", "weight_decay_rate")
        amp.check(self.precision)
        if self.cuda_graphs and self.compile:
            raise ValueError("cuda_graphs and compile exclude each other: choose one")
        self._check_overrides()
        # The model's settings (mask_prob, temperature, the generator's fractions, the loss
        # weights, embedding_size, the overrides) are checked by the config they make, now
        # rather than when a run starts; the dataset decides the vocabulary, 1 stands in.
        self.model_config(self.vocab_size or 1, {})

    def _check_overrides(self) -> None:
        """model_hparam_overrides names ElectraConfig fields, with their types."""
        from electra_fast.model.config import ElectraConfig

        fields = typing.get_type_hints(ElectraConfig)
        unknown = sorted(set(self.model_hparam_overrides) - set(fields))
        if unknown:
            raise ValueError(f"unknown model_hparam_overrides {unknown}; known: {sorted(fields)}")
        self.model_hparam_overrides = {
            key: typed_value(f"model_hparam_overrides.{key}", value, fields[key])
            for key, value in self.model_hparam_overrides.items()
        }

    def model_config(self, vocab_size: int, special_ids: dict):
        """The ElectraConfig these hyper-parameters describe."""
        from electra_fast.model import ElectraConfig

        fields = dict(
            vocab_size=vocab_size,
            max_position_embeddings=max(512, self.max_seq_length),
            generator_hidden_size=self.generator_hidden_size,
            generator_layers=self.generator_layers,
            untied_generator_embeddings=self.untied_generator_embeddings,
            gen_weight=self.gen_weight,
            disc_weight=self.disc_weight,
            mask_prob=self.mask_prob,
            temperature=self.temperature,
            disallow_correct=self.disallow_correct,
            **special_ids,
        )
        if self.embedding_size is not None:
            fields["embedding_size"] = self.embedding_size
        fields.update(self.model_hparam_overrides)
        return ElectraConfig.preset(self.model_size, **fields)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
