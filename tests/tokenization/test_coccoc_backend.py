"""Segmenter(backend="coccoc"): the installed coccoc behind our interface, compared with our
own segmenter wherever electra_fast was built against coccoc (skipped otherwise)."""

import json
from pathlib import Path

import pytest

from electra_fast.tokenization import coccoc_backend, vietnamese
from electra_fast.tokenization.vietnamese import Segmenter

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "samples" / "vi.txt"
REFERENCE = Path(__file__).parent / "data" / "coccoc_reference.jsonl"


def test_bad_backend_names_itself():
    with pytest.raises(ValueError, match="backend must be one of"):
        Segmenter(backend="pyvi")


@pytest.mark.skipif(coccoc_backend.available(), reason="electra_fast was built with coccoc")
def test_without_the_binding_the_error_says_how_to_build_it():
    with pytest.raises(ImportError, match="COCCOC_ROOT"):
        Segmenter(backend="coccoc")


@pytest.fixture(scope="module")
def both():
    if not coccoc_backend.available():
        pytest.skip("electra_fast was built without coccoc (set COCCOC_ROOT and reinstall)")
    if not vietnamese.dicts_present():
        pytest.skip(f"coccoc's dictionaries are not downloaded (`{vietnamese.DOWNLOAD_COMMAND}`)")
    return Segmenter(backend="coccoc"), Segmenter()


def test_backends_agree_on_real_text(both):
    original, ours = both
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()[::4]
    rows = [json.loads(line) for line in REFERENCE.read_text(encoding="utf-8").splitlines()]
    for mode in vietnamese.MODES:
        texts = lines + [r["text"] for r in rows if r["mode"] == mode]
        assert original.tokens_batch(texts, mode=mode) == ours.tokens_batch(texts, mode=mode)
        assert original.segment_words_batch(texts, mode=mode) == ours.segment_words_batch(
            texts, mode=mode
        )
    # Spans agree where coccoc drops nothing: no '_' and no URL in the text.
    plain = [t for t in lines if "_" not in t and "/" not in t and "." not in t.strip(".")]
    assert original.segment_batch(plain) == ours.segment_batch(plain)
    assert original._impl._count_batch(lines, 0, 1) == ours._impl._count_batch(lines, 0, 1)


def test_the_coccoc_backend_keeps_any_str_and_refuses_a_second_configuration(both):
    original, ours = both
    text = "lone \ud800 surrogate, Việt Nam"
    assert original.tokens(text) == ours.tokens(text)
    assert original.segment(text, keep_punct=False) == ours.segment(text, keep_punct=False)
    with pytest.raises(TypeError, match="text must be str"):
        original.tokens(b"bytes")
    with pytest.raises(ValueError, match="process-wide singleton"):
        Segmenter(backend="coccoc", load_nontone_data=False)
    with pytest.raises(ValueError, match="spelling_variants"):
        Segmenter(backend="coccoc", spelling_variants=True)
