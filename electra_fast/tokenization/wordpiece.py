"""WordPiece with a BERT-style vocab.txt (Google's ELECTRA checkpoints) through `tokenizers`.
Accent stripping destroys Vietnamese diacritics, so it is off unless asked for."""

from __future__ import annotations

import os
from pathlib import Path

from electra_fast.tokenization import file_checksum, save_with_config


class WordPieceTokenizer:
    def __init__(
        self, vocab_file: str | os.PathLike, *, lowercase: bool = False, strip_accents: bool = False
    ):
        from tokenizers import BertWordPieceTokenizer

        self.vocab_file = Path(vocab_file)
        if not self.vocab_file.is_file():
            raise FileNotFoundError(f"no vocab.txt at {self.vocab_file}")
        self.lowercase, self.strip_accents = lowercase, strip_accents
        lines = self.vocab_file.read_text(encoding="utf-8").splitlines()
        missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t not in lines]
        if missing:  # checked first: `tokenizers` reports a missing [SEP] as a TypeError
            raise ValueError(f"{self.vocab_file} lacks the special tokens {missing}")
        self._tokenizer = BertWordPieceTokenizer(
            str(self.vocab_file), lowercase=lowercase, strip_accents=strip_accents
        )
        vocab = self._tokenizer.get_vocab()
        self.vocab_size = len(vocab)
        self.pad_token_id, self.unk_token_id = vocab["[PAD]"], vocab["[UNK]"]
        self.cls_token_id, self.sep_token_id = vocab["[CLS]"], vocab["[SEP]"]
        self.mask_token_id = vocab["[MASK]"]

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """ids and each token's [start, end) in `text` (characters)."""
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        return encoding.ids, [tuple(span) for span in encoding.offsets]

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(list(ids))

    def save(self, directory: str | os.PathLike) -> None:
        config = {"type": "wordpiece", "vocab": "vocab.txt", "lowercase": self.lowercase,
                  "strip_accents": self.strip_accents}  # fmt: skip
        save_with_config(directory, self.vocab_file, "vocab.txt", config)

    def checksum(self) -> str:
        options = f"lowercase={self.lowercase},strip_accents={self.strip_accents}"
        return file_checksum(self.vocab_file) + ":" + options
