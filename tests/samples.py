"""The bundled English sample (data/samples/en.txt) prepared for pretraining, for the tests and
benchmarks that need a real dataset."""

from pathlib import Path

import pytest

from electra_fast.data import prepare

EN_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "samples" / "en.txt"


def prepare_en_sample(root: Path, *, vocab_size: int, max_seq_length: int) -> Path:
    """A SentencePiece vocabulary of `vocab_size` trained on the sample (root/tok), and the
    sample prepared with it at `max_seq_length`; returns the dataset's directory, root/data.
    Skips the test without sentencepiece."""
    pytest.importorskip("sentencepiece")
    from electra_fast.tokenization.sentencepiece import train_sentencepiece

    lines = [x for x in EN_SAMPLE.read_text(encoding="utf-8").splitlines() if x]
    train_sentencepiece(lines, root / "tok", vocab_size=vocab_size)
    prepare([str(EN_SAMPLE)], str(root / "tok"), str(root / "data"),
            max_seq_length=max_seq_length, progress=False)  # fmt: skip
    return root / "data"
