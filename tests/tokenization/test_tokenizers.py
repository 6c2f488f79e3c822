"""SentencePiece training and loading, WordPiece options, load() and its errors."""

import pytest

from electra_fast import tokenization
from electra_fast.tokenization.sentencepiece import train_sentencepiece
from electra_fast.tokenization.wordpiece import WordPieceTokenizer
from tests.data.corpus_cases import SPECIALS, documents

pytest.importorskip("sentencepiece")


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_training_and_loading(tmp_path, model_type):
    lines = [line for doc in documents(400) for line in doc.split("\n")]
    trained = train_sentencepiece(lines, tmp_path, vocab_size=150, model_type=model_type)
    assert trained.vocab_size == 150
    ids = [trained.pad_token_id, trained.unk_token_id, trained.cls_token_id]
    ids += [trained.sep_token_id, trained.mask_token_id]
    assert ids == [0, 1, 2, 3, 4]  # [PAD] [UNK] [CLS] [SEP] [MASK], the control symbols first
    text = lines[0]
    encoded = trained.encode(text)
    assert trained.decode(encoded) == text
    assert not set(encoded) & {0, 2, 3, 4}  # no special tokens from plain text
    assert trained.encode("[MASK]") != [4]  # control symbols cannot be typed in
    loaded = tokenization.load(tmp_path)
    assert loaded.encode(text) == encoded and loaded.checksum() == trained.checksum()
    assert loaded.encode_batch(lines[:5]) == [trained.encode(t) for t in lines[:5]]


def test_sentencepiece_vocab_too_large_or_too_small(tmp_path):
    with pytest.raises(ValueError, match="vocab_size=5000 is too large"):
        train_sentencepiece(["a b c", "b c d"] * 10, tmp_path, vocab_size=5000)
    # 5 special pieces + 12 letters + the word boundary do not fit in 10.
    with pytest.raises(ValueError, match="vocab_size=10 is smaller than the corpus's character"):
        train_sentencepiece(["abcdef ghijkl"] * 10, tmp_path, vocab_size=10)
    with pytest.raises(ValueError, match="model_type"):
        train_sentencepiece(["a"], tmp_path, model_type="word")
    with pytest.raises(ValueError, match="no text to train a vocabulary on"):
        train_sentencepiece(["", "  ", "\t"], tmp_path / "blank")
    assert not (tmp_path / "blank").exists()


def test_wordpiece_keeps_vietnamese_diacritics_unless_asked(tmp_path):
    vocab = SPECIALS + ["tiếng", "việt", "tieng", "viet", "##s"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    plain = WordPieceTokenizer(tmp_path / "vocab.txt")
    assert plain.encode("tiếng việt") == [5, 6]
    stripped = WordPieceTokenizer(tmp_path / "vocab.txt", lowercase=True, strip_accents=True)
    assert stripped.encode("Tiếng Việt") == [7, 8]
    assert plain.checksum() != stripped.checksum()  # the options are part of the tokenizer
    stripped.save(tmp_path / "saved")
    again = tokenization.load(tmp_path / "saved")
    assert again.encode("Tiếng Việt") == [7, 8]


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        tokenization.load(tmp_path)
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"\[PAD\]"):
        tokenization.load(tmp_path / "vocab.txt")
    (tmp_path / "tokenizer_config.json").write_text('{"type": "bytes"}')
    with pytest.raises(ValueError, match="unknown tokenizer type"):
        tokenization.load(tmp_path)
