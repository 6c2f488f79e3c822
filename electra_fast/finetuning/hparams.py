"""Finetuning hyper-parameters with the official names and defaults (configure_finetuning.py):
lr 1e-4 with layer-wise decay 0.8 (large: 5e-5 and 0.9), weight decay 0.01, 10% warmup, batch
32, 3 epochs at length 128 (tagging: 256, as for the official chunking); question answering: 2
epochs at length 512, questions of at most 64 tokens, windows 128 tokens apart, answers of at
most 30 tokens from the 20 best starts and ends."""

from __future__ import annotations

import dataclasses

from electra_fast import amp
from electra_fast._checks import check_range
from electra_fast.pretraining.hparams import check_keys, check_types, read_json_object

TASKS = ("classification", "regression", "squad", "tagging")


@dataclasses.dataclass
class FinetuneHparams:
    task: str = "classification"
    model_size: str | None = None  # default: from the model's hidden size (256/768/1024)
    learning_rate: float | None = None  # default 1e-4; large 5e-5
    layerwise_lr_decay: float | None = None  # default 0.8; large 0.9; 0 turns it off
    weight_decay_rate: float = 0.01
    num_train_epochs: float | None = None  # default 3; squad 2
    num_train_steps: int | None = None  # overrides the epochs
    warmup_proportion: float = 0.1
    train_batch_size: int = 32
    eval_batch_size: int = 32
    max_seq_length: int | None = None  # default 128; tagging 256; squad 512
    max_grad_norm: float = 1.0
    classification_head: str = "electra"  # the official head; "hf": Hugging Face's
    # data
    text_field: str = "text"
    pair_field: str | None = None
    label_field: str = "label"
    # tagging
    tagging_level: str | None = None  # "span" (F1) or "token" (accuracy); default: from the tags
    # question answering
    v2: bool = False  # SQuAD 2.0: questions may have no answer
    answerable_classifier: bool = True  # with v2: a [CLS] classifier of answerability
    answerable_weight: float = 0.5
    joint_prediction: bool = True  # the official joint start-end head; False: Hugging Face's
    beam_size: int = 20  # starts, and ends per start, the joint head keeps
    max_query_length: int = 64
    doc_stride: int = 128
    n_best_size: int = 20
    max_answer_length: int = 30
    qa_na_threshold: float = -2.75  # with v2: answer "" when the null odds exceed this
    f1_unit: str = "word"  # "char" for text without spaces (Japanese)
    # running
    precision: str = "auto"  # fp32, bf16, fp16 (loss-scaled); auto: electra_fast.amp.resolve
    # Each encoder layer's forward run again in the backward: less memory, more compute.
    gradient_checkpointing: bool = False
    seed: int = 0
    num_trials: int = 1  # finetunings of the same checkpoint, seeds seed, seed + 1, ...
    log_steps: int = 50

    @classmethod
    def from_json(cls, text_or_path: str | None, **given) -> FinetuneHparams:
        """From a JSON object or file (official keys) and keyword arguments; unknown keys are
        errors that name them."""
        data = {**read_json_object(text_or_path), **given}
        check_keys(data, cls)
        return cls(**data)

    def __post_init__(self):
        check_types(self)
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.model_size not in (None, "small", "base", "large"):
            raise ValueError(f"model_size must be small, base or large, got {self.model_size!r}")
        if self.classification_head not in ("electra", "hf"):
            raise ValueError(
                f"classification_head must be 'electra' or 'hf', got {self.classification_head!r}"
            )
        if self.tagging_level not in (None, "span", "token"):
            raise ValueError(f"tagging_level must be 'span' or 'token', got {self.tagging_level!r}")
        if self.f1_unit not in ("word", "char"):
            raise ValueError(f"f1_unit must be 'word' or 'char', got {self.f1_unit!r}")
        amp.check(self.precision)
        check_range(self, "positive", "train_batch_size", "eval_batch_size", "max_query_length",
                    "doc_stride", "n_best_size", "max_answer_length", "log_steps", "beam_size",
                    "num_trials", "num_train_steps", "max_seq_length", "max_grad_norm")  # fmt: skip
        check_range(self, "positive and finite", "learning_rate", "num_train_epochs")
        check_range(self, ">= 0", "weight_decay_rate", "answerable_weight")
        check_range(self, "in [0, 1]", "warmup_proportion", "layerwise_lr_decay")
        if self.v2 and self.joint_prediction and not self.answerable_classifier:
            raise ValueError("v2 with joint_prediction needs answerable_classifier: the joint head "
                             "has no [CLS] score to tell unanswerable questions by")  # fmt: skip

    def resolved(self, hidden_size: int) -> FinetuneHparams:
        """These settings with the defaults that depend on the model and the task filled in."""
        size = self.model_size or {256: "small", 768: "base", 1024: "large"}.get(hidden_size)
        large = size == "large"
        squad = self.task == "squad"
        defaults = {
            "learning_rate": 5e-5 if large else 1e-4,
            "layerwise_lr_decay": 0.9 if large else 0.8,
            "num_train_epochs": 2.0 if squad else 3.0,
            "max_seq_length": {"squad": 512, "tagging": 256}.get(self.task, 128),
        }
        given = {name: getattr(self, name) for name in defaults}
        filled = {name: defaults[name] if value is None else value for name, value in given.items()}
        return dataclasses.replace(self, model_size=size, **filled)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
