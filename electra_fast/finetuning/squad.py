"""SQuAD-style extractive question answering (v1.1 and v2.0, and sets in their format such as
JaQuAD or JSQuAD): reading the JSON, turning questions and contexts into windowed features,
and turning span logits back into answers, as google-research/electra's finetune/qa does.

One deliberate difference: spans are located through each token's character offsets in the
context (Tokenizer.encode_with_offsets) instead of whitespace-separated words. The official
code maps answers to words first, which for text without spaces (Japanese) makes a whole
clause one word; with offsets the answer is context[start:end] of the predicted tokens in any
language, and no text has to be re-aligned after prediction.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from electra_fast.data.dataset import collate_padded


@dataclass
class QAExample:
    qid: str
    question: str
    context: str
    answers: list[str]  # gold texts (several for dev sets); empty: no answer
    answer_start: int = -1  # the first answer's character offset (training)


@dataclass
class QAFeature:
    """One window of a context with its question: [CLS] question [SEP] context part [SEP]."""

    example_index: int
    input_ids: list[int]
    token_type_ids: list[int]
    spans: list[tuple[int, int] | None]  # each position's characters in the context, if any
    max_context: list[bool]  # whether this window gives the token its widest context
    start_position: int = 0  # training targets; 0 ([CLS]) when the answer is not in the window
    end_position: int = 0
    has_answer: bool = False


@dataclass
class FeatureStats:
    examples: int = 0
    features: int = 0
    skipped: list[str] = field(default_factory=list)  # training answers not found in context


def read_squad(path: str | os.PathLike) -> list[QAExample]:
    """The questions of a SQuAD-format JSON file ({"data": [{"paragraphs": [{"context",
    "qas": [{"id", "question", "answers": [{"text", "answer_start"}], "is_impossible"}]}]}]})."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not SQuAD-format JSON (a 'data' list): {error}") from None
    examples = []
    for a, article in enumerate(data):
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            context = paragraph.get("context")
            if not isinstance(context, str):
                raise ValueError(f"{where} has no 'context' string")
            for q, qa in enumerate(paragraph.get("qas", [])):
                if "question" not in qa or "id" not in qa:
                    raise ValueError(f"{where}.qas[{q}] needs an 'id' and a 'question'")
                answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                examples.append(
                    QAExample(
                        qid=str(qa["id"]),
                        question=qa["question"],
                        context=context,
                        answers=[answer["text"] for answer in answers],
                        answer_start=int(answers[0]["answer_start"]) if answers else -1,
                    )
                )
    return examples


def make_features(
    examples: list[QAExample],
    tokenizer,
    *,
    max_seq_length: int = 512,
    max_query_length: int = 64,
    doc_stride: int = 128,
    training: bool = False,
) -> tuple[list[QAFeature], FeatureStats]:
    """Windows of `max_seq_length` tokens over each context, `doc_stride` tokens apart, each
    with the (truncated) question in front. With `training`, the targets of each window: the
    answer's first and last token, or [CLS] when it has no answer or the answer lies outside
    it; an answer whose text is not at its offset in the context is skipped and reported."""
    for name, value in (("max_seq_length", max_seq_length), ("doc_stride", doc_stride),
                        ("max_query_length", max_query_length)):  # fmt: skip
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    features, stats = [], FeatureStats(examples=len(examples))
    context = None
    for index, example in enumerate(examples):
        if example.context != context:  # the questions of a paragraph share its context
            context = example.context
            doc_ids, doc_spans = tokenizer.encode_with_offsets(context)
        query = tokenizer.encode(example.question)[:max_query_length]
        target = None
        if training and example.answers:
            target = _answer_tokens(example, doc_spans)
            if target is None:
                stats.skipped.append(example.qid)
                continue
        room = max_seq_length - len(query) - 3
        if room < 1:
            raise ValueError(
                f"max_seq_length={max_seq_length} leaves no room for the context after question "
                f"{example.qid!r} ({len(query)} tokens with max_query_length={max_query_length}), "
                "[CLS] and two [SEP]"
            )
        windows = _windows(len(doc_ids), room, doc_stride)
        prefix = len(query) + 2
        for w, (start, length) in enumerate(windows):
            ids = [cls, *query, sep, *doc_ids[start : start + length], sep]
            feature = QAFeature(
                example_index=index,
                input_ids=ids,
                token_type_ids=[0] * prefix + [1] * (length + 1),
                spans=[None] * prefix + doc_spans[start : start + length] + [None],
                max_context=[False] * prefix
                + [_is_max_context(windows, w, start + i) for i in range(length)]
                + [False],
            )
            if target is not None and start <= target[0] and target[1] < start + length:
                feature.start_position = target[0] - start + prefix
                feature.end_position = target[1] - start + prefix
                feature.has_answer = True
            features.append(feature)
    stats.features = len(features)
    return features, stats


def _answer_tokens(example: QAExample, spans: list[tuple[int, int]]) -> tuple[int, int] | None:
    begin = example.answer_start
    text = example.answers[0]
    if begin < 0 or example.context[begin : begin + len(text)] != text:
        return None
    end = begin + len(text.rstrip())
    begin += len(text) - len(text.lstrip())
    inside = [i for i, (s, e) in enumerate(spans) if e > s and s < end and e > begin]
    return (inside[0], inside[-1]) if inside else None


def _windows(tokens: int, room: int, stride: int) -> list[tuple[int, int]]:
    """(start, length) of each window, as the official sliding window: advance by the stride
    (or a whole window if shorter) until one reaches the end."""
    windows, start = [], 0
    while True:
        length = min(tokens - start, room)
        windows.append((start, length))
        if start + length >= tokens:
            return windows
        start += min(length, stride)


def _is_max_context(windows: list[tuple[int, int]], current: int, position: int) -> bool:
    """Whether window `current` is the one whose context around `position` is widest: the
    largest min(left, right) context, ties to the longer and then the earlier window."""
    best, best_score = None, None
    for w, (start, length) in enumerate(windows):
        if not start <= position < start + length:
            continue
        score = min(position - start, start + length - 1 - position) + 0.01 * length
        if best_score is None or score > best_score:
            best, best_score = w, score
    return best == current


def collate(features: list[QAFeature], pad_id: int, training: bool) -> dict[str, torch.Tensor]:
    """A right-padded batch: input_ids, attention_mask, token_type_ids, and with `training`
    start_positions, end_positions and has_answer."""
    batch = collate_padded(
        [{"input_ids": torch.tensor(f.input_ids), "token_type_ids": torch.tensor(f.token_type_ids)}
         for f in features], pad_id)  # fmt: skip
    if training:
        batch["start_positions"] = torch.tensor([f.start_position for f in features])
        batch["end_positions"] = torch.tensor([f.end_position for f in features])
        batch["has_answer"] = torch.tensor([float(f.has_answer) for f in features])
    return batch


def predict(
    examples: list[QAExample],
    features: list[QAFeature],
    start_logits: list[list[float]],
    end_logits: list[list[float]],
    answerable_logits: list[float] | None = None,
    *,
    n_best_size: int = 20,
    **options,
) -> tuple[dict[str, str], dict[str, float]]:
    """Each question's answer and its "null odds", from independent start and end logits.

    A candidate span starts and ends at one of a window's `n_best_size` highest start and end
    logits, and scores start + end logit. `choose` says which are legal, and what the null odds
    and `options` (max_answer_length, allow_no_answer, null_threshold) are."""
    candidates, null_scores = [], []
    for feature, starts, ends in zip(features, start_logits, end_logits, strict=True):
        n = len(feature.input_ids)
        top_ends = _top(ends[:n], n_best_size)
        candidates.append(
            [(s, e, starts[s] + ends[e]) for s in _top(starts[:n], n_best_size) for e in top_ends]
        )
        null_scores.append(starts[0] + ends[0])
    return choose(examples, features, candidates, null_scores, answerable_logits, **options)


def predict_joint(
    examples: list[QAExample],
    features: list[QAFeature],
    beams: list[tuple[list[float], list[int], list[list[float]], list[list[int]]]],
    answerable_logits: list[float] | None = None,
    **options,
) -> tuple[dict[str, str], dict[str, float]]:
    """The same from the joint head's beams (start log-probabilities and positions, and each
    start's end log-probabilities and positions): a candidate scores the sum of its start's
    and its end's log-probability. SQuAD 2.0 then needs the answerable classifier."""
    if options.get("allow_no_answer") and answerable_logits is None:
        raise ValueError("the joint head predicts no-answer only with the answerable classifier")
    candidates = [
        [(s, e, s_lp + e_lp) for s_lp, s, e_lps, es in zip(*beam, strict=True)
         for e_lp, e in zip(e_lps, es, strict=True)]
        for beam in beams
    ]  # fmt: skip
    return choose(examples, features, candidates, None, answerable_logits, **options)


def choose(
    examples: list[QAExample],
    features: list[QAFeature],
    candidates: list[list[tuple[int, int, float]]],
    null_scores: list[float] | None,
    answerable_logits: list[float] | None,
    *,
    max_answer_length: int = 30,
    allow_no_answer: bool = False,
    null_threshold: float = 0.0,
) -> tuple[dict[str, str], dict[str, float]]:
    """Each question's best legal (start, end, score) over its windows' candidates: a legal
    span lies in the context, ends no earlier than it starts, is at most `max_answer_length`
    tokens long and starts where its window gives it the widest context. With
    `allow_no_answer` (SQuAD 2.0) the answer is "" when the null odds exceed `null_threshold`:
    minus the largest answerable logit over the windows when there is a classifier (the
    official min over windows of its no-answer logit), else the smallest [CLS] score minus the
    best span's score."""
    by_example: dict[int, list[int]] = {}
    for i, feature in enumerate(features):
        by_example.setdefault(feature.example_index, []).append(i)
    answers, null_odds = {}, {}
    for index, example in enumerate(examples):
        best_text, best_score = "", -float("inf")
        null_score, answerable = float("inf"), -float("inf")
        for i in by_example.get(index, []):
            feature = features[i]
            if null_scores is not None:
                null_score = min(null_score, null_scores[i])
            if answerable_logits is not None:
                answerable = max(answerable, answerable_logits[i])
            n = len(feature.spans)  # a beam may reach into the padding
            for s, e, score in candidates[i]:
                if s >= n or e >= n or feature.spans[s] is None or not feature.max_context[s]:
                    continue
                if feature.spans[e] is None or not s <= e < s + max_answer_length:
                    continue
                if score > best_score:
                    begin, end = feature.spans[s][0], feature.spans[e][1]
                    best_text, best_score = example.context[begin:end], score
        odds = -answerable if answerable_logits is not None else null_score - best_score
        null_odds[example.qid] = odds
        answers[example.qid] = best_text  # "" when no span is legal
    if allow_no_answer:
        answers = abstain(answers, null_odds, null_threshold)
    return answers, null_odds


def abstain(
    answers: dict[str, str], null_odds: dict[str, float], threshold: float
) -> dict[str, str]:
    """The answers with "" for each question whose null odds exceed `threshold`: SQuAD 2.0's
    decision, which the official evaluation takes from its na_prob_thresh."""
    return {qid: "" if null_odds[qid] > threshold else text for qid, text in answers.items()}


def _top(values: list[float], k: int) -> list[int]:
    return sorted(range(len(values)), key=lambda i: -values[i])[:k]
