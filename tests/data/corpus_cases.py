"""Small corpora and tokenizers written by the tests."""

import random
from pathlib import Path

from electra_fast.tokenization.wordpiece import WordPieceTokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [f"w{i}" for i in range(200)]


def wordpiece(directory: Path, extra_words: int = 0) -> Path:
    """A WordPiece tokenizer directory whose words are w0, w1, ... (one id each)."""
    directory.mkdir(parents=True, exist_ok=True)
    words = WORDS + [f"x{i}" for i in range(extra_words)]
    (directory / "vocab.txt").write_text("\n".join(SPECIALS + words) + "\n")
    WordPieceTokenizer(directory / "vocab.txt").save(directory)
    return directory


def documents(n: int, seed: int = 0) -> list[str]:
    """n documents of 1-8 lines of 3-20 words."""
    rng = random.Random(seed)
    return [
        "\n".join(
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 20)))
            for _ in range(rng.randint(1, 8))
        )
        for _ in range(n)
    ]


def corpus_text(docs: list[str]) -> str:
    return "\n\n".join(docs) + "\n"
