"""Tokenizers behind one interface: SentencePiece (trained here or loaded), WordPiece with a
BERT-style vocab.txt, either optionally after word segmentation (tokenization.segmented).
`load(path)` opens the directory that training or conversion wrote.

Every tokenizer has encode(text) -> ids (no special tokens), encode_batch, encode_with_offsets
(ids and each token's character span in the text, for question answering), decode, vocab_size,
the ids of [PAD] [UNK] [CLS] [SEP] [MASK], `files` (what defines it) and `checksum()`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Protocol

from electra_fast._files import write_atomically

CONFIG = "tokenizer_config.json"


class Tokenizer(Protocol):
    vocab_size: int
    pad_token_id: int
    unk_token_id: int
    cls_token_id: int
    sep_token_id: int
    mask_token_id: int

    def encode(self, text: str) -> list[int]: ...
    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...
    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]: ...
    def decode(self, ids: list[int]) -> str: ...
    def save(self, directory: str | os.PathLike) -> None: ...
    def checksum(self) -> str: ...


def load(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer in `path`: a directory with tokenizer_config.json, a SentencePiece
    `.model` file, or a WordPiece `vocab.txt`. A config's `pre_segmenter` (see
    tokenization.segmented) wraps the tokenizer so that text is word-segmented first."""
    path = Path(path)
    if path.is_dir() and (path / CONFIG).is_file():
        config = json.loads((path / CONFIG).read_text())
        if "pre_segmenter" in config:
            from electra_fast.tokenization.segmented import SegmentedTokenizer

            base = _load_config(path, {k: v for k, v in config.items() if k != "pre_segmenter"})
            return SegmentedTokenizer(base, config["pre_segmenter"])
        return _load_config(path, config)
    if path.is_file() and path.suffix == ".model":
        from electra_fast.tokenization.sentencepiece import SentencePieceTokenizer

        return SentencePieceTokenizer(path)
    if path.is_file() and path.suffix == ".txt":
        from electra_fast.tokenization.wordpiece import WordPieceTokenizer

        return WordPieceTokenizer(path)
    raise FileNotFoundError(
        f"no tokenizer at {path}: expected a directory with {CONFIG}, a .model or a vocab.txt"
    )


def _load_config(path: Path, config: dict) -> Tokenizer:
    kind = config.get("type")
    if kind == "sentencepiece":
        from electra_fast.tokenization.sentencepiece import SentencePieceTokenizer

        return SentencePieceTokenizer(path / config["model"])
    if kind == "wordpiece":
        from electra_fast.tokenization.wordpiece import WordPieceTokenizer

        return WordPieceTokenizer(
            path / config["vocab"],
            lowercase=config.get("lowercase", False),
            strip_accents=config.get("strip_accents", False),
        )
    raise ValueError(f"{path / CONFIG}: unknown tokenizer type {kind!r}")


def file_checksum(*paths: Path) -> str:
    """sha256 over the files' bytes, in order: what a dataset records of its tokenizer."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def save_with_config(directory: str | os.PathLike, source: Path, name: str, config: dict) -> None:
    """Copies the file that defines a tokenizer into `directory` as `name` (unless it is that
    file already) and writes the config that `load` reads."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    if target.resolve() != Path(source).resolve():
        shutil.copyfile(source, target)
    write_config(directory, config)


def write_config(directory: Path, config: dict) -> None:
    write_atomically(directory / CONFIG, json.dumps(config, indent=2) + "\n")


__all__ = ["Tokenizer", "load", "file_checksum"]
