"""SentencePiece: training (unigram or BPE, the special tokens as control symbols, as the
Japanese ELECTRA recipe does) and encoding through the `sentencepiece` library."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable
from pathlib import Path

from electra_fast.tokenization import file_checksum, load, save_with_config, write_config

_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MODEL_TYPES = ("unigram", "bpe")


def _spm():
    try:
        import sentencepiece
    except ImportError as error:  # pragma: no cover - a dependency, but say what to do
        raise ImportError("SentencePiece tokenizers need `pip install sentencepiece`") from error
    return sentencepiece


class SentencePieceTokenizer:
    def __init__(self, model_file: str | os.PathLike):
        self.model_file = Path(model_file)
        if not self.model_file.is_file():
            raise FileNotFoundError(f"no SentencePiece model at {self.model_file}")
        self._sp = _spm().SentencePieceProcessor(model_file=str(self.model_file))
        self.vocab_size = self._sp.get_piece_size()
        ids = {}
        for piece in SPECIAL_TOKENS:
            found = self._sp.piece_to_id(piece)
            if found == self._sp.unk_id() and piece != "[UNK]":
                raise ValueError(f"{self.model_file} has no {piece} piece")
            ids[piece] = found
        self.pad_token_id, self.unk_token_id = ids["[PAD]"], ids["[UNK]"]
        self.cls_token_id, self.sep_token_id = ids["[CLS]"], ids["[SEP]"]
        self.mask_token_id = ids["[MASK]"]

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        return self._sp.encode(list(texts), out_type=int, num_threads=num_threads)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """ids and each token's [start, end) in `text` (characters). SentencePiece works on
        its normalised text ("▁" for spaces, NFKC), so the spans come from the normaliser's
        own map back to the input; a token's leading "▁" is not part of its span, and the
        byte pieces of a byte-fallback model share the span of their character."""
        normalized, back = self._sp.Normalize(text, with_offsets=True)
        pieces = self._sp.encode(text, out_type=str)
        ids = [self._sp.piece_to_id(piece) for piece in pieces]  # an unknown piece: [UNK]
        offsets, at, pending = [], 0, bytearray()
        for index, piece in enumerate(pieces):
            if _BYTE_PIECE.fullmatch(piece):
                pending.append(int(piece[3:5], 16))
                try:
                    width = len(pending.decode("utf-8"))
                except UnicodeDecodeError:  # an incomplete character: its next byte follows
                    continue
                span = (back[at], back[min(at + width, len(normalized))])
                offsets += [span] * (index + 1 - len(offsets))
                at, pending = at + width, bytearray()
                continue
            start = at + len(piece) - len(piece.lstrip("\u2581"))
            at += len(piece)
            if at > len(normalized):
                break
            offsets.append((back[start], back[at]) if start < at else (back[at], back[at]))
        if at != len(normalized) or len(offsets) != len(ids):
            raise RuntimeError(
                f"{self.model_file}: the pieces of {text[:50]!r} do not tile its normalised text"
            )
        return ids, offsets

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode(list(ids))

    def save(self, directory: str | os.PathLike) -> None:
        config = {"type": "sentencepiece", "model": "spm.model"}
        save_with_config(directory, self.model_file, "spm.model", config)

    def checksum(self) -> str:
        return file_checksum(self.model_file)


def train_sentencepiece(
    sentences: Iterable[str],
    out: str | os.PathLike,
    *,
    vocab_size: int = 32000,
    model_type: str = "unigram",
    character_coverage: float = 0.9995,
    input_sentence_size: int = 10_000_000,
    seed: int = 0,
    num_threads: int = 1,
    pre_segmenter: dict | None = None,
):
    """Trains a model on `sentences` (one per item; blank ones are skipped) and writes it to the
    directory `out` (spm.model + tokenizer_config.json). At most `input_sentence_size`
    sentences, sampled with `seed`, feed the training, for corpora of any size.

    pre_segmenter: a word segmenter's config (tokenization.segmented), e.g.
    {"type": "vietnamese"}: the model is trained on segmented text and the config records the
    segmenter, so the loaded tokenizer segments before encoding."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size must be more than {len(SPECIAL_TOKENS)}, got {vocab_size}")
    spm = _spm()
    segment = None
    if pre_segmenter is not None:  # built before training so a bad config fails at once
        from electra_fast.tokenization.segmented import make_segmenter

        segment = make_segmenter(pre_segmenter)
    text = _segmented(sentences, segment)
    first = next(text, None)
    if first is None:  # else SentencePiece's own "[!sentences_.empty()]"
        raise ValueError("no text to train a vocabulary on: the input holds only blank lines")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(seed)
    prefix = out / ".spm-training"
    options = dict(
        sentence_iterator=itertools.chain([first], text),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True,
        pad_id=0,
        pad_piece="[PAD]",
        unk_id=1,
        unk_piece="[UNK]",
        bos_id=-1,
        eos_id=-1,
        control_symbols=["[CLS]", "[SEP]", "[MASK]"],
        num_threads=num_threads,
        minloglevel=2,
    )
    try:
        spm.SentencePieceTrainer.train(**options)
    except RuntimeError as error:
        if "Vocabulary size too high" in str(error):
            raise ValueError(
                f"vocab_size={vocab_size} is too large for this corpus: {error}"
            ) from error
        if "smaller than required_chars" in str(error):
            raise ValueError(
                f"vocab_size={vocab_size} is smaller than the corpus's character set needs "
                f"(lower character_coverage={character_coverage}, or raise vocab_size): {error}"
            ) from error
        raise
    os.replace(f"{prefix}.model", out / "spm.model")
    Path(f"{prefix}.vocab").replace(out / "spm.vocab")
    config = {"type": "sentencepiece", "model": "spm.model"}
    if pre_segmenter is not None:
        config["pre_segmenter"] = pre_segmenter
    write_config(out, config)
    return load(out)


def _segmented(sentences: Iterable[str], segment, chunk: int = 1024):
    """The non-blank sentences, segmented in chunks when a segmenter is given."""
    if segment is None:
        yield from (s for s in sentences if s.strip())
        return
    pending = []
    for s in sentences:
        if s.strip():
            pending.append(s)
        if len(pending) == chunk:
            yield from segment.batch(pending)
            pending = []
    yield from segment.batch(pending)
