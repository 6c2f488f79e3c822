"""Finetuning heads on a pretrained discriminator's encoder: sequence classification and
regression, question answering, token classification. Parameter names follow Hugging Face's
ElectraFor* classes, so their checkpoints load both ways (except where a head has no Hugging
Face counterpart: the official classification head and the answerable classifier)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from electra_fast.model import hf
from electra_fast.model.config import ElectraConfig
from electra_fast.model.modeling import Encoder, init_weights
from electra_fast.model.models import PretrainedModel

HEADS = ("electra", "hf")


class FinetuningModel(PretrainedModel):
    """An encoder and a task head; `from_discriminator` starts from pretrained weights."""

    def __init__(self, config: ElectraConfig):
        super().__init__(config)
        self.encoder = Encoder(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    @classmethod
    def from_discriminator(cls, directory: str | os.PathLike, **arguments):
        """A new model whose encoder is a pretrained discriminator's (a Hugging Face
        ElectraForPreTraining directory, ours, or ElectraForPretraining's save directory) and
        whose head is freshly initialised. `arguments` go to the constructor."""
        directory = Path(directory)
        if (directory / "discriminator").is_dir():
            directory = directory / "discriminator"
        model = cls(ElectraConfig.load(directory), **arguments)
        converted, _ = hf.from_hf(hf.read_weights(directory))
        encoder = {k: v for k, v in converted.items() if k.startswith("encoder.")}
        expected = {k for k in model.state_dict() if k.startswith("encoder.")}
        if set(encoder) != expected:
            raise ValueError(
                f"the checkpoint at {directory} does not hold this encoder: missing "
                f"{sorted(expected - set(encoder))}, unexpected {sorted(set(encoder) - expected)}"
            )
        model.load_state_dict(encoder, strict=False)
        return model


class ClassificationHead(nn.Module):
    """Hugging Face's: [CLS] → dropout → dense → GELU → dropout → out_proj."""

    def __init__(self, config: ElectraConfig, num_labels: int):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, num_labels)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.dense(self.dropout(cls)))
        return self.out_proj(self.dropout(x))


class ElectraForSequenceClassification(FinetuningModel):
    """Sequence classification (num_labels classes) or regression (regression=True, one value)
    from the [CLS] vector. head="electra": the official head (dropout → dense); head="hf":
    Hugging Face's, whose checkpoints transformers can load. `labels` names the classes in
    config.json's id2label."""

    architecture = "ElectraForSequenceClassification"

    def __init__(
        self,
        config,
        num_labels: int = 2,
        head: str = "hf",
        regression: bool = False,
        labels: list[str] | None = None,
    ):
        super().__init__(config)
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if regression:
            num_labels = 1
        self.labels = _checked_labels(labels, num_labels)
        self.num_labels, self.head, self.regression = num_labels, head, regression
        if head == "hf":
            self.classifier = ClassificationHead(config, num_labels)
        else:
            self.classifier = nn.Linear(config.hidden_size, num_labels)
        init_weights(self, config.initializer_range)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """[B, num_labels] logits ([B, 1] predictions for regression)."""
        cls = self.encoder(input_ids, attention_mask, token_type_ids)[:, 0]
        if self.head == "hf":
            return self.classifier(cls)
        return self.classifier(self.dropout(cls))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the classes, or mean squared error for regression."""
        if self.regression:
            return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
        return F.cross_entropy(logits, labels)

    def config_extra(self) -> dict:
        return {
            **_label_names(self.labels, self.num_labels),
            "problem_type": "regression" if self.regression else "single_label_classification",
            "electra_fast_head": self.head,
        }

    @classmethod
    def init_arguments(cls, config_json: dict) -> dict:
        return {
            **_label_arguments(config_json),
            "head": config_json.get("electra_fast_head", "hf"),
            "regression": config_json.get("problem_type") == "regression",
        }


class ElectraForTokenClassification(FinetuningModel):
    """A label per token: dropout → dense (Hugging Face's head). `labels` names the classes in
    config.json's id2label; `span_tags=True` records that they are BIOES tags of spans (see
    finetuning.tagging), so that a saved tagger is scored by spans again."""

    architecture = "ElectraForTokenClassification"

    def __init__(
        self,
        config: ElectraConfig,
        num_labels: int = 2,
        labels: list[str] | None = None,
        span_tags: bool = False,
    ):
        super().__init__(config)
        self.labels = _checked_labels(labels, num_labels)
        self.num_labels, self.span_tags = num_labels, span_tags
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        init_weights(self, config.initializer_range)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """[B, L, num_labels] logits."""
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)
        return self.classifier(self.dropout(hidden))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the labelled tokens (-100 marks the others), summed over each
        sentence and averaged over the batch, as the official tagging loss is."""
        total = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100,
                                reduction="sum")  # fmt: skip
        return total / labels.shape[0]

    def config_extra(self) -> dict:
        return {
            **_label_names(self.labels, self.num_labels),
            "electra_fast_span_tags": self.span_tags,
        }

    @classmethod
    def init_arguments(cls, config_json: dict) -> dict:
        return {
            **_label_arguments(config_json),
            "span_tags": bool(config_json.get("electra_fast_span_tags", False)),
        }


def label_names(labels: list[str] | None, num_labels: int) -> list[str]:
    """The classes' names: `labels`, or Hugging Face's LABEL_0, LABEL_1, ... when unnamed."""
    return labels or [f"LABEL_{i}" for i in range(num_labels)]


def _checked_labels(labels: list[str] | None, num_labels: int) -> list[str] | None:
    if labels is not None and len(labels) != num_labels:
        raise ValueError(f"labels names {len(labels)} classes but num_labels={num_labels}")
    if num_labels < 1:
        raise ValueError(f"num_labels must be positive, got {num_labels}")
    return list(labels) if labels is not None else None


def _label_names(labels: list[str] | None, num_labels: int) -> dict:
    names = label_names(labels, num_labels)
    return {
        "id2label": {str(i): name for i, name in enumerate(names)},
        "label2id": {name: i for i, name in enumerate(names)},
    }


def _label_arguments(config_json: dict) -> dict:
    id2label = config_json.get("id2label", {"0": "LABEL_0", "1": "LABEL_1"})
    names = [id2label[str(i)] for i in range(len(id2label))]
    default = names == label_names(None, len(names))
    return {"num_labels": len(id2label), "labels": None if default else names}


class SpanLogits(NamedTuple):
    start: torch.Tensor  # [B, L]
    end: torch.Tensor  # [B, L]; with the joint head, given the start position passed
    answerable: torch.Tensor | None  # [B] logit that the question has an answer, if asked for


class SpanBeam(NamedTuple):
    """The joint head's candidates: the `beam` most likely starts, and for each of them the
    `beam` most likely ends, with their log-probabilities over the answer positions."""

    start_log_probs: torch.Tensor  # [B, beam]
    start_index: torch.Tensor  # [B, beam]
    end_log_probs: torch.Tensor  # [B, beam, beam]
    end_index: torch.Tensor  # [B, beam, beam]
    answerable: torch.Tensor | None  # [B]


class JointSpanHead(nn.Module):
    """The official joint start-end head (finetune/qa, joint_prediction): start logits from
    each token; end logits from each token together with the start token, through a 512-unit
    GELU layer over their concatenation."""

    def __init__(self, hidden_size: int, inner: int = 512):
        super().__init__()
        self.start = nn.Linear(hidden_size, 1)
        self.end_hidden = nn.Linear(2 * hidden_size, inner)
        self.end = nn.Linear(inner, 1)

    def end_logits(self, hidden: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """[B, K, L] end logits of each of the K start vectors starts [B, K, H]."""
        # dense([h_s; h_j]) = W_s h_s + W_e h_j + b: the two halves apply apart and add, so
        # the [B, K, L, 2H] concatenation the official code tiles is never formed.
        w_start, w_end = self.end_hidden.weight.split(hidden.shape[-1], dim=1)
        inner = (starts @ w_start.T).unsqueeze(2) + F.linear(hidden, w_end, self.end_hidden.bias)[
            :, None
        ]
        return self.end(F.gelu(inner)).squeeze(-1)


class AnswerableHead(nn.Module):
    """The official answerable classifier (answerable_uses_start_logits): [CLS] and the
    start-probability-weighted mean of the tokens, through a 512-unit GELU layer."""

    def __init__(self, hidden_size: int, inner: int = 512):
        super().__init__()
        self.hidden = nn.Linear(2 * hidden_size, inner)
        self.output = nn.Linear(inner, 1)

    def forward(self, hidden: torch.Tensor, start_logits: torch.Tensor) -> torch.Tensor:
        pooled = torch.einsum(
            "bl,blh->bh", start_logits.float().softmax(-1).to(hidden.dtype), hidden
        )
        return self.output(F.gelu(self.hidden(torch.cat([hidden[:, 0], pooled], -1)))).squeeze(-1)


def answer_mask(attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
    """Where an answer may start or end: the context (segment 1) and [CLS] (no answer)."""
    mask = attention_mask.bool() & token_type_ids.bool()
    mask[:, 0] = True
    return mask


def _masked(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # As the official head: −1000 outside the answer positions, in fp32.
    return logits.float() + (mask.float() - 1) * 1000.0


class ElectraForQuestionAnswering(FinetuningModel):
    """SQuAD-style spans. joint=False: Hugging Face's head (qa_outputs, independent start and
    end logits; transformers loads it). joint=True: the official joint head, whose end logits
    depend on the start (training: the gold start, `start_positions`; prediction:
    `beam_search`). answerable=True adds the official answerable classifier for SQuAD 2.0.
    Start and end logits are −1000 outside the context and [CLS], as officially."""

    architecture = "ElectraForQuestionAnswering"

    def __init__(self, config: ElectraConfig, answerable: bool = False, joint: bool = False):
        super().__init__(config)
        self.joint = joint
        if joint:
            self.qa_head = JointSpanHead(config.hidden_size)
        else:
            self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.answerable_head = AnswerableHead(config.hidden_size) if answerable else None
        init_weights(self, config.initializer_range)

    def forward(
        self, input_ids, attention_mask=None, token_type_ids=None, start_positions=None
    ) -> SpanLogits:
        hidden, mask = self._encode(input_ids, attention_mask, token_type_ids)
        if self.joint:
            if start_positions is None:
                raise ValueError("the joint head needs start_positions (or use beam_search)")
            start = _masked(self.qa_head.start(hidden).squeeze(-1), mask)
            chosen = hidden[torch.arange(len(hidden), device=hidden.device), start_positions]
            end = _masked(self.qa_head.end_logits(hidden, chosen[:, None])[:, 0], mask)
        else:
            start, end = (_masked(x, mask) for x in self.qa_outputs(hidden).unbind(-1))
        return SpanLogits(start, end, self._answerable(hidden, start))

    @torch.no_grad()
    def beam_search(
        self, input_ids, attention_mask=None, token_type_ids=None, beam: int = 20
    ) -> SpanBeam:
        """The joint head's prediction: the top `beam` starts, each with its top `beam` ends."""
        if not self.joint:
            raise ValueError("beam_search needs the joint head (joint=True)")
        hidden, mask = self._encode(input_ids, attention_mask, token_type_ids)
        start = _masked(self.qa_head.start(hidden).squeeze(-1), mask)
        beam = min(beam, start.shape[1])
        start_log_probs, start_index = start.log_softmax(-1).topk(beam, -1)
        chosen = hidden.gather(1, start_index[..., None].expand(-1, -1, hidden.shape[-1]))
        end = _masked(self.qa_head.end_logits(hidden, chosen), mask[:, None])
        end_log_probs, end_index = end.log_softmax(-1).topk(beam, -1)
        return SpanBeam(
            start_log_probs, start_index, end_log_probs, end_index, self._answerable(hidden, start)
        )

    def _encode(self, input_ids, attention_mask, token_type_ids):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            raise ValueError("question answering needs token_type_ids (1 on the context)")
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)
        return hidden, answer_mask(attention_mask, token_type_ids)

    def _answerable(self, hidden, start_logits):
        if self.answerable_head is None:
            return None
        return self.answerable_head(hidden, start_logits).float()

    def config_extra(self) -> dict:
        return {
            "electra_fast_answerable": self.answerable_head is not None,
            "electra_fast_joint": self.joint,
        }

    @classmethod
    def init_arguments(cls, config_json: dict) -> dict:
        return {
            "answerable": bool(config_json.get("electra_fast_answerable", False)),
            "joint": bool(config_json.get("electra_fast_joint", False)),
        }
