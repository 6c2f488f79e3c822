"""Word segmentation before subword tokenisation, as the Vietnamese ELECTRA corpus was made:
text → words joined by '_' inside and spaces between ("Tôi yêu Việt_Nam") → subword ids.

A segmenter is named in the tokenizer's own config, so every user of the tokenizer directory
(`prepare`, finetuning, `load`) segments the same way:

    {"type": "sentencepiece", "model": "spm.model",
     "pre_segmenter": {"type": "vietnamese", "load_nontone_data": true}}

Segmenters are pluggable. A factory takes the config's other keys and returns an object with
`__call__(text) -> str` and `batch(texts) -> list[str]`; the type names it either as
"package.module:factory" (found by import, so `prepare`'s worker processes find it too) or by a
name given to `register_segmenter(name, factory)` in this process.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol


class WordSegmenter(Protocol):
    def __call__(self, text: str) -> str: ...
    def batch(self, texts: Sequence[str]) -> list[str]: ...


_FACTORIES: dict[str, Callable[[dict], WordSegmenter]] = {}


def register_segmenter(name: str, factory: Callable[[dict], WordSegmenter]) -> None:
    """Makes `{"type": name, ...options}` usable as a pre_segmenter config."""
    _FACTORIES[name] = factory


def make_segmenter(config: dict) -> WordSegmenter:
    if not isinstance(config, dict) or "type" not in config:
        raise ValueError(f"pre_segmenter must be a dict with a 'type', got {config!r}")
    kind = config["type"]
    options = {k: v for k, v in config.items() if k != "type"}
    if kind in _FACTORIES:
        return _FACTORIES[kind](options)
    if isinstance(kind, str) and ":" in kind:
        module, _, name = kind.partition(":")
        try:
            factory = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"pre_segmenter: cannot import {kind!r}: {error}") from error
        return factory(options)
    raise ValueError(
        f"pre_segmenter: unknown type {kind!r}; registered: {sorted(_FACTORIES)}, "
        "or name one as 'package.module:factory'"
    )


class VietnameseWords:
    """coccoc-compatible segmentation (normal mode), tokens joined by spaces."""

    OPTIONS = ("dicts", "load_nontone_data", "spelling_variants")

    def __init__(self, options: dict):
        from electra_fast.tokenization.vietnamese import Segmenter

        unknown = set(options) - set(self.OPTIONS)
        if unknown:
            raise ValueError(
                f"pre_segmenter: unknown vietnamese options {sorted(unknown)}; "
                f"known: {list(self.OPTIONS)}"
            )
        # load_nontone_data defaults to coccoc's default: it changes normal mode too (it splits
        # run-together words such as "OpenOffice" inside domain-like tokens).
        self._segmenter = Segmenter(
            options.get("dicts"),
            options.get("load_nontone_data", True),
            spelling_variants=options.get("spelling_variants", False),
        )

    def __call__(self, text: str) -> str:
        return self._segmenter.segment_words(text)

    def batch(self, texts: Sequence[str]) -> list[str]:
        return self._segmenter.segment_words_batch(texts, num_threads=1)


register_segmenter("vietnamese", VietnameseWords)


class SegmentedTokenizer:
    """A tokenizer whose input is segmented first. Ids, special tokens and decode are the
    base tokenizer's; decode gives the segmented text back ("Việt_Nam")."""

    def __init__(self, base, pre_segmenter: dict):
        self.base = base
        self.pre_segmenter = dict(pre_segmenter)
        self.segment = make_segmenter(self.pre_segmenter)
        for name in ("vocab_size", "pad_token_id", "unk_token_id", "cls_token_id",
                     "sep_token_id", "mask_token_id"):  # fmt: skip
            setattr(self, name, getattr(base, name))

    def encode(self, text: str) -> list[int]:
        return self.base.encode(self.segment(text))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.base.encode_batch(self.segment.batch(texts))

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """ids and each token's [start, end) in the original (unsegmented) text."""
        segmented = self.segment(text)
        ids, offsets = self.base.encode_with_offsets(segmented)
        back = align_segmented(text, segmented)
        return ids, [(back[start], back[max(start, end)]) for start, end in offsets]

    def decode(self, ids: list[int]) -> str:
        return self.base.decode(ids)

    def save(self, directory: str | os.PathLike) -> None:
        from electra_fast.tokenization import CONFIG, write_config

        self.base.save(directory)
        config = json.loads((Path(directory) / CONFIG).read_text())
        write_config(Path(directory), {**config, "pre_segmenter": self.pre_segmenter})

    def checksum(self) -> str:
        # Where the dictionaries live is not part of what the tokenizer does; the options are.
        options = {k: v for k, v in self.pre_segmenter.items() if k != "dicts"}
        return f"{self.base.checksum()}:pre_segmenter={json.dumps(options, sort_keys=True)}"


def align_segmented(original: str, segmented: str) -> list[int]:
    """For each position of `segmented` (and its end), the matching position of `original`.

    A segmenter keeps every non-space character and changes only the spaces: it joins the
    syllables of a word with '_' (a space in the original) and may put spaces where there were
    none (before punctuation). A character it changed otherwise is taken as a substitution in
    place, so the map stays monotone whatever the segmenter did."""
    back = [0] * (len(segmented) + 1)
    i = 0
    for j, char in enumerate(segmented):
        while i < len(original) and original[i].isspace() and not char.isspace():
            if char == "_" and not _underscore_after_spaces(original, i):
                break  # this '_' stands for the space
            i += 1  # a space the segmenter dropped
        back[j] = min(i, len(original))
        if i < len(original) and (
            original[i] == char or (original[i].isspace() and (char.isspace() or char == "_"))
        ):
            i += 1
        elif char.isspace():
            pass  # a space the segmenter inserted: it takes no original character
        elif i < len(original):
            i += 1  # a substituted character
    back[len(segmented)] = len(original) if i >= len(original) else i
    return back


def _underscore_after_spaces(text: str, i: int) -> bool:
    while i < len(text) and text[i].isspace():
        i += 1
    return i < len(text) and text[i] == "_"
