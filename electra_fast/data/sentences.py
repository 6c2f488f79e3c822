"""Sentence splitting for ELECTRA's one-sentence-per-line corpora.

Japanese splits after 。！？ (and ．!?), keeping closing brackets and quotes with the sentence
they end. Vietnamese and English split after . ! ? … followed by a space and a sentence start;
never inside numbers (3.5, 1.000.000) and not after common abbreviations.
"""

from __future__ import annotations

import re

LANGUAGES = ("ja", "vi", "en")
_JA_END = "。！？．!?"
_CLOSERS = "」』）】〕〉》\")’”'"
_JA_SPLIT = re.compile(f"([{_JA_END}]+[{re.escape(_CLOSERS)}]*)")
# A sentence end: terminal punctuation (possibly repeated), optional closing quotes/brackets,
# then whitespace; the next character must not be a lowercase letter (checked in code, as
# Vietnamese upper- and lowercase letters interleave in Unicode).
_LATIN_SPLIT = re.compile(r"([.!?…]+[\"'”’)\]]*)\s+(?=\S)")
ABBREVIATIONS = {
    "en": {
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "st",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "no",
        "fig",
        "jr",
        "sr",
    },
    "vi": {"tp", "ths", "ts", "gs", "pgs", "bs", "ks", "st", "tr", "q", "p"},
}


def split_sentences(text: str, language: str) -> list[str]:
    """The sentences of `text` (one paragraph), stripped, empty ones dropped."""
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    text = text.strip()
    if not text:
        return []
    if language == "ja":
        parts = _JA_SPLIT.split(text)
        sentences = ["".join(parts[i : i + 2]) for i in range(0, len(parts), 2)]
        return [s.strip() for s in sentences if s.strip()]
    return _split_latin(text, ABBREVIATIONS[language])


def _split_latin(text: str, abbreviations: set[str]) -> list[str]:
    sentences, start = [], 0
    for match in _LATIN_SPLIT.finditer(text):
        if text[match.end()].islower():
            continue
        before = text[start : match.start()].rsplit(None, 1)
        last_word = before[-1].lower() if before else ""
        if match.group(1) == "." and (
            last_word.rstrip(".") in abbreviations or len(last_word.rstrip(".")) == 1
        ):
            continue  # "Dr. Smith", "TP. Hồ Chí Minh", an initial: not a sentence end
        sentences.append(text[start : match.end(1)].strip())
        start = match.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]
