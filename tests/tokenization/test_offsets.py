"""encode_with_offsets: each token's characters in the input, for SentencePiece (through its
normaliser's map), WordPiece, and after word segmentation (mapped back to the unsegmented
text)."""

import random
import unicodedata
from pathlib import Path

import pytest

from electra_fast import tokenization
from electra_fast.tokenization.segmented import align_segmented, register_segmenter
from electra_fast.tokenization.sentencepiece import train_sentencepiece
from tests.data.corpus_cases import wordpiece

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"


@pytest.fixture(scope="module")
def sentencepiece(tmp_path_factory):
    pytest.importorskip("sentencepiece")
    lines = []
    for name in ("en", "ja", "vi"):
        lines += (SAMPLES / f"{name}.txt").read_text(encoding="utf-8").splitlines()[:400]
    return train_sentencepiece(lines, tmp_path_factory.mktemp("spm"), vocab_size=2000), lines


def test_sentencepiece_spans_are_the_pieces_text(sentencepiece):
    tokenizer, lines = sentencepiece
    checked = 0
    for line in lines[::7]:
        if unicodedata.normalize("NFKC", line) != line or "  " in line or not line.strip():
            continue  # the normaliser would change these characters
        ids, offsets = tokenizer.encode_with_offsets(line)
        assert ids == tokenizer.encode(line)
        pieces = tokenizer._sp.encode(line, out_type=str)
        for (start, end), piece, i in zip(offsets, pieces, ids, strict=True):
            if i != tokenizer.unk_token_id:
                assert line[start:end] == piece.lstrip("\u2581"), (line, piece)
        checked += 1
    assert checked > 50


def test_sentencepiece_spans_through_normalisation(sentencepiece):
    tokenizer, _ = sentencepiece
    text = "  Xin   chào ﬁ ＡＢ 東京。"  # runs of spaces, a ligature and full-width letters
    ids, offsets = tokenizer.encode_with_offsets(text)
    assert ids == tokenizer.encode(text)
    ends = [e for _, e in offsets]
    assert all(0 <= s <= e <= len(text) for s, e in offsets) and ends == sorted(ends)
    covered = "".join(text[s:e] for s, e in offsets)
    assert covered.replace(" ", "") == text.replace(" ", "")  # every character, once
    assert not any(text[s:e].startswith(" ") for s, e in offsets)


def test_wordpiece_spans(tmp_path):
    pytest.importorskip("tokenizers")
    tokenizer = tokenization.load(wordpiece(tmp_path))
    text = "w1  w22,w3 W4"
    ids, offsets = tokenizer.encode_with_offsets(text)
    assert ids == tokenizer.encode(text)
    assert [text[s:e] for s, e in offsets] == ["w1", "w22", ",", "w3", "W4"]


def _toy_segment(text: str) -> str:
    """A segmenter's kinds of change: syllables of a word joined by '_', spaces put before
    punctuation, runs of spaces made one."""
    words = text.replace(".", " .").replace(",", " ,").split()
    out = []
    for word in words:
        if out and out[-1] in ("Việt", "Hà") and word in ("Nam", "Nội"):
            out[-1] += "_" + word
        else:
            out.append(word)
    return " ".join(out)


class _Toy:
    def __init__(self, options):
        pass

    __call__ = staticmethod(_toy_segment)

    def batch(self, texts):
        return [_toy_segment(t) for t in texts]


def test_alignment_maps_every_kept_character_home():
    rng = random.Random(0)
    vocab = ["Việt", "Nam", "Hà", "Nội", "và", "là", ".", ",", "_x_"]
    for _ in range(300):
        original = "".join(rng.choice(vocab) + rng.choice(["", " ", "  ", "\t"]) for _ in range(12))
        segmented = _toy_segment(original)
        back = align_segmented(original, segmented)
        assert back == sorted(back) and back[-1] <= len(original)
        for j, char in enumerate(segmented):
            if char not in " _" or (char == "_" and original[back[j]] == "_"):
                assert original[back[j]] == char, (original, segmented, j)


def test_segmented_tokenizer_offsets_point_into_the_original(tmp_path):
    pytest.importorskip("sentencepiece")
    register_segmenter("toy-offsets", _Toy)
    lines = ["Tôi yêu Việt Nam và Hà Nội.", "Việt Nam, Hà Nội là thủ đô."] * 50
    lines += (SAMPLES / "vi.txt").read_text(encoding="utf-8").splitlines()[:300]
    base = train_sentencepiece([_toy_segment(t) for t in lines], tmp_path, vocab_size=300)
    tokenizer = tokenization.segmented.SegmentedTokenizer(base, {"type": "toy-offsets"})
    text = "Tôi  yêu Việt Nam,Hà Nội."
    ids, offsets = tokenizer.encode_with_offsets(text)
    assert ids == tokenizer.encode(text)
    pieces = base._sp.encode(_toy_segment(text), out_type=str)
    for (start, end), piece in zip(offsets, pieces, strict=True):
        assert text[start:end] == piece.lstrip("\u2581").replace("_", " ")
