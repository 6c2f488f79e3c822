"""Sequence tagging (named entities, chunks, parts of speech) as google-research/electra's
finetune/tagging does: sentences of words with one tag each, every word labelled through its
first token, [CLS] words [SEP].

Tags are handled at one of two levels. "span": the tags mark spans (BIO, IOB1 or BIOES, such as
B-PER I-PER O); they are turned into spans and re-encoded as BIOES for training, and scored by
span precision, recall and F1 (the official chunking setup, also the usual one for NER).
"token": each tag is a class of its own (parts of speech), scored by word accuracy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from electra_fast.data.dataset import collate_padded

LEVELS = ("span", "token")
_SPAN_PREFIXES = ("B", "I", "E", "S")
IGNORED = -100  # the label of a position that is not a word's first token


@dataclass
class TaggedSentence:
    words: list[str]
    tags: list[str] | None  # None: unlabelled


@dataclass
class TaggingFeature:
    input_ids: list[int]
    positions: list[int]  # each word's first token; the words that did not fit have none


def read_tagged(path: str | os.PathLike) -> list[TaggedSentence]:
    """The sentences of a CoNLL-style file (one word per line, its first column the word and
    its last the tag, a blank line between sentences, -DOCSTART- lines skipped; a file of
    one-column lines is unlabelled) or of a .jsonl file ({"tokens": [...], "tags": [...]}
    per line)."""
    path = Path(path)
    sentences = _read_jsonl(path) if path.suffix == ".jsonl" else _read_conll(path)
    if not sentences:
        raise ValueError(f"{path} holds no sentences")
    labelled = {s.tags is not None for s in sentences}
    if len(labelled) > 1:
        raise ValueError(f"{path}: some sentences have tags and others have none")
    return sentences


def _read_conll(path: Path) -> list[TaggedSentence]:
    sentences, words, tags, number = [], [], [], 0
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            columns = line.split()
            if not columns:
                if words:
                    sentences.append(_sentence(words, tags, f"{path}:{number - 1}"))
                    words, tags = [], []
                continue
            if columns[0] == "-DOCSTART-":
                continue
            words.append(columns[0])
            tags.append(columns[-1] if len(columns) > 1 else None)
    if words:
        sentences.append(_sentence(words, tags, f"{path}:{number}"))
    return sentences


def _sentence(words: list[str], tags: list, where: str) -> TaggedSentence:
    if all(t is None for t in tags):
        return TaggedSentence(words, None)
    if any(t is None for t in tags):
        raise ValueError(f"{where}: a sentence where some words have a tag and others none")
    return TaggedSentence(words, tags)


def _read_jsonl(path: Path) -> list[TaggedSentence]:
    sentences = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not JSON: {error}") from None
            words, tags = row.get("tokens"), row.get("tags")
            if not isinstance(words, list) or not words:
                raise ValueError(f"{path}:{number}: 'tokens' must be a non-empty list of words")
            if tags is not None and len(tags) != len(words):
                raise ValueError(f"{path}:{number}: {len(tags)} tags for {len(words)} tokens")
            sentences.append(TaggedSentence([str(w) for w in words], tags and list(map(str, tags))))
    return sentences


def is_span_tag(tag: str) -> bool:
    prefix, _, kind = tag.partition("-")
    return tag == "O" or (prefix in _SPAN_PREFIXES and bool(kind))


def span_labels(tags: list[str]) -> list[tuple[int, int, str]]:
    """(first word, last word, type) of each span, exactly as the official get_span_labels
    reads tags: a span starts at B- or S-, or at any tag after O, and ends before the next B-,
    S- or O; it takes the type of its last tag. So I-X right after O opens a span (IOB1), and
    a valid BIO or BIOES sequence gives its spans."""
    spans, last, start = [], "O", -1
    for i, tag in enumerate(tags):
        prefix = None if tag == "O" else tag.partition("-")[0]
        if (prefix in ("S", "B") or tag == "O") and last != "O":
            spans.append((start, i - 1, last.partition("-")[2]))
        if prefix in ("B", "S") or last == "O":
            start = i
        last = tag
    if tags and tags[-1] != "O":
        spans.append((start, len(tags) - 1, tags[-1].partition("-")[2]))
    return spans


def bioes_tags(spans: list[tuple[int, int, str]], length: int) -> list[str]:
    """The BIOES tags of `length` words with these spans (the official get_tags)."""
    tags = ["O"] * length
    for first, last, kind in spans:
        tags[first : last + 1] = [f"I-{kind}"] * (last + 1 - first)
        tags[last] = f"E-{kind}"
        tags[first] = f"S-{kind}" if first == last else f"B-{kind}"
    return tags


def detect_level(sentences: list[TaggedSentence]) -> str:
    """ "span" when every tag is O or B-/I-/E-/S- and a type, else "token"."""
    tags = {t for s in sentences for t in s.tags or ()}
    return "span" if tags and all(map(is_span_tag, tags)) else "token"


def check_span_tags(tags: Iterable[str]) -> None:
    for tag in tags:
        if not is_span_tag(tag):
            raise ValueError(f"tag {tag!r} is not O or B-/I-/E-/S- and a type; set "
                             '"tagging_level": "token" to treat tags as plain classes')  # fmt: skip


def training_tags(sentence: TaggedSentence, level: str) -> list[str]:
    """The tags a model learns for this sentence: BIOES at the span level, else as given."""
    if level == "token":
        return sentence.tags
    check_span_tags(sentence.tags)
    return bioes_tags(span_labels(sentence.tags), len(sentence.tags))


def label_vocabulary(sentences: list[TaggedSentence], level: str) -> list[str]:
    """The classes, sorted: the training tags, and at the span level every BIOES tag of each
    type seen (so that a type seen only in one-word spans can still be predicted over two)."""
    tags = {t for s in sentences if s.tags for t in training_tags(s, level)}
    if not tags:
        raise ValueError("the training sentences have no tags")
    if level == "span":
        kinds = {t.partition("-")[2] for t in tags if t != "O"}
        tags = {"O"} | {f"{prefix}-{kind}" for kind in kinds for prefix in _SPAN_PREFIXES}
    return sorted(tags)


def encode(sentences: list[TaggedSentence], tokenizer, max_seq_length: int) -> list[TaggingFeature]:
    """[CLS] tokens [SEP] of each sentence, each word tokenised on its own (as the official
    tokenize_and_align; a word with no token becomes [UNK]). A sentence longer than
    max_seq_length keeps the words whose first token fits, and as much of the last as fits."""
    if max_seq_length < 3:
        raise ValueError(f"max_seq_length must be at least 3, got {max_seq_length}")
    words = tokenizer.encode_batch([w for s in sentences for w in s.words])
    cls, sep, unk = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.unk_token_id
    features, at = [], 0
    for sentence in sentences:
        ids, positions = [cls], []
        for tokens in words[at : at + len(sentence.words)]:
            room = max_seq_length - 1 - len(ids)
            if room < 1:
                break
            positions.append(len(ids))
            ids += (tokens or [unk])[:room]
        at += len(sentence.words)
        features.append(TaggingFeature([*ids, sep], positions))
    return features


def collate(
    features: list[TaggingFeature], labels: list[list[int]] | None, pad_id: int
) -> dict[str, torch.Tensor]:
    """The padded batch, with `labels` [B, L]: each word's class at its first token and
    IGNORED elsewhere (when labels are given, one list per feature for its kept words)."""
    batch = collate_padded(
        [{"input_ids": torch.tensor(f.input_ids), "token_type_ids": torch.zeros(len(f.input_ids),
          dtype=torch.long)} for f in features], pad_id)  # fmt: skip
    if labels is not None:
        targets = torch.full_like(batch["input_ids"], IGNORED)
        for row, (feature, classes) in enumerate(zip(features, labels, strict=True)):
            kept = feature.positions
            if kept:
                targets[row, kept] = torch.tensor(classes[: len(kept)], dtype=torch.long)
        batch["labels"] = targets
    return batch
