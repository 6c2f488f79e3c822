"""The bundled sample corpora: within the size limit, in the expected scripts, and usable end
to end (a SentencePiece vocabulary trained on one, the corpus prepared with it)."""

from pathlib import Path

import pytest

from electra_fast.data import PretrainingDataset, prepare

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"


@pytest.mark.parametrize(("language", "marker"), [("vi", "ư"), ("ja", "の"), ("en", "the")])
def test_sample_corpora(language, marker):
    path = SAMPLES / f"{language}.txt"
    data = path.read_bytes()
    assert 500_000 < len(data) <= 1_000_000
    text = data.decode("utf-8")  # valid UTF-8
    documents = [d for d in text.split("\n\n") if d.strip()]
    assert len(documents) > 100 and marker in text
    assert (SAMPLES / "NOTICE").read_text().count("MPL") or "Mozilla" in (
        SAMPLES / "NOTICE"
    ).read_text()


def test_train_and_prepare_on_a_sample(tmp_path):
    pytest.importorskip("sentencepiece")
    from electra_fast.tokenization.sentencepiece import train_sentencepiece

    text = (SAMPLES / "ja.txt").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line]
    tokenizer = train_sentencepiece(lines, tmp_path / "tok", vocab_size=2000)
    manifest = prepare(
        [str(SAMPLES / "ja.txt")],
        str(tmp_path / "tok"),
        str(tmp_path / "data"),
        max_seq_length=128,
        progress=False,
    )
    dataset = PretrainingDataset(tmp_path / "data", tokenizer=tokenizer)
    assert len(dataset) == manifest["counts"]["examples"] > 500
    assert manifest["counts"]["documents"] == 882
