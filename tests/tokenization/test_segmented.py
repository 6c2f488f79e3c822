"""Word segmentation before subword tokenisation: training on segmented text, the segmenter
recorded in the tokenizer's config and applied by load() and prepare(), pluggable segmenters."""

import json

import pytest

from electra_fast import cli, tokenization
from electra_fast.data import PretrainingDataset, prepare
from electra_fast.tokenization.segmented import SegmentedTokenizer, make_segmenter
from electra_fast.tokenization.sentencepiece import SentencePieceTokenizer, train_sentencepiece

from .vietnamese_dicts import write_dicts

pytest.importorskip("sentencepiece")
pytest.importorskip("electra_fast._vi")

# With the small dictionaries, "việt nam" and "hà nội" are words; the other syllables are not.
LINES = ["tôi yêu việt nam", "tôi ở hà nội", "hà nội là thủ đô của việt nam"] * 40
SEGMENTED_BY_HAND = {
    "tôi yêu việt nam": "tôi yêu việt_nam",
    "tôi ở hà nội": "tôi ở hà_nội",
    "hà nội là thủ đô của việt nam": "hà_nội là thủ đô của việt_nam",
}


@pytest.fixture(scope="module")
def dicts(tmp_path_factory):
    return write_dicts(tmp_path_factory.mktemp("vi_dicts"))


@pytest.fixture(scope="module")
def vi_tokenizer(tmp_path_factory, dicts):
    out = tmp_path_factory.mktemp("vi_tok")
    config = {"type": "vietnamese", "dicts": str(dicts)}
    train_sentencepiece(LINES, out, vocab_size=28, pre_segmenter=config)
    return out


def test_the_model_is_trained_on_segmented_text_and_load_segments_first(vi_tokenizer):
    config = json.loads((vi_tokenizer / "tokenizer_config.json").read_text())
    assert config["pre_segmenter"]["type"] == "vietnamese"
    tokenizer = tokenization.load(vi_tokenizer)
    base = SentencePieceTokenizer(vi_tokenizer / "spm.model")
    assert isinstance(tokenizer, SegmentedTokenizer)
    for text, by_hand in SEGMENTED_BY_HAND.items():
        assert tokenizer.encode(text) == base.encode(by_hand)
    # '_' joins syllables only in segmented text: a piece spanning one shows what training saw.
    pieces = [base._sp.id_to_piece(i) for i in range(base.vocab_size)]
    assert any("_" in p for p in pieces)
    texts = list(SEGMENTED_BY_HAND)
    assert tokenizer.encode_batch(texts) == [base.encode(SEGMENTED_BY_HAND[t]) for t in texts]
    assert tokenizer.decode(tokenizer.encode(texts[0])) == "tôi yêu việt_nam"
    assert tokenizer.mask_token_id == base.mask_token_id and tokenizer.vocab_size == 28
    assert tokenizer.checksum() != base.checksum()  # a dataset knows its text was segmented


def test_save_and_load_keep_the_segmenter(tmp_path, vi_tokenizer):
    tokenizer = tokenization.load(vi_tokenizer)
    tokenizer.save(tmp_path / "copy")
    again = tokenization.load(tmp_path / "copy")
    assert isinstance(again, SegmentedTokenizer) and again.checksum() == tokenizer.checksum()
    assert again.encode("việt nam") == tokenizer.encode("việt nam")


def test_prepare_segments_in_every_worker(tmp_path, vi_tokenizer):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(LINES[:30]) + "\n")
    base = SentencePieceTokenizer(vi_tokenizer / "spm.model")
    for processes in (1, 2):
        out = tmp_path / f"data{processes}"
        prepare([str(corpus)], str(vi_tokenizer), str(out), max_seq_length=64,
                unit_bytes=300, num_processes=processes, progress=False)  # fmt: skip
        dataset = PretrainingDataset(out)
        found = set()
        for i in range(len(dataset)):
            ids = dataset[i]["input_ids"].tolist()
            body = [t for t in ids if t not in (base.cls_token_id, base.sep_token_id)]
            found.add(tuple(body))
        # Each example is one document of one sentence: its ids are the hand-segmented text's.
        assert found == {tuple(base.encode(s)) for s in SEGMENTED_BY_HAND.values()}


class Upper:
    """A segmenter from outside the package, found by its import path."""

    def __init__(self, options):
        self.suffix = options.get("suffix", "")

    def __call__(self, text):
        return text.upper() + self.suffix

    def batch(self, texts):
        return [self(t) for t in texts]


def test_a_segmenter_named_by_import_path(tmp_path):
    segment = make_segmenter({"type": f"{__name__}:Upper", "suffix": "!"})
    assert segment("ab") == "AB!" and segment.batch(["a", "b"]) == ["A!", "B!"]
    lines = ["abc def", "ABC DEF", "ghi"] * 30
    train_sentencepiece(lines, tmp_path, vocab_size=16, pre_segmenter={"type": f"{__name__}:Upper"})
    tokenizer = tokenization.load(tmp_path)
    assert tokenizer.encode("abc") == tokenizer.encode("ABC")


def test_bad_segmenter_configs_name_themselves(tmp_path, dicts):
    with pytest.raises(ValueError, match="unknown type 'klingon'"):
        make_segmenter({"type": "klingon"})
    with pytest.raises(ValueError, match="pre_segmenter must be a dict"):
        make_segmenter("vietnamese")
    with pytest.raises(ValueError, match="cannot import"):
        make_segmenter({"type": "no_such_module:factory"})
    with pytest.raises(ValueError, match=r"unknown vietnamese options \['mode'\]"):
        make_segmenter({"type": "vietnamese", "dicts": str(dicts), "mode": "url"})
    with pytest.raises(FileNotFoundError, match="dicts: coccoc's dictionaries are not in"):
        make_segmenter({"type": "vietnamese", "dicts": str(tmp_path)})
    # A bad segmenter fails before any training starts and leaves no tokenizer behind.
    with pytest.raises(ValueError, match="unknown type"):
        train_sentencepiece(LINES, tmp_path / "tok", vocab_size=60, pre_segmenter={"type": "x"})
    assert not (tmp_path / "tok").exists()


def test_cli_train_tokenizer_with_a_segmenter(tmp_path, dicts, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(LINES) + "\n")
    args = ["train-tokenizer", "--input", str(corpus), "--vocab-size", "28", "--out"]
    assert cli.main([*args, str(tmp_path / "t"), "--pre-segmenter", "vietnamese",
                     "--segmenter-dicts", str(dicts)]) == 0  # fmt: skip
    tokenizer = tokenization.load(tmp_path / "t")
    base = SentencePieceTokenizer(tmp_path / "t" / "spm.model")
    assert tokenizer.encode("tôi ở hà nội") == base.encode("tôi ở hà_nội")
    assert cli.main([*args, str(tmp_path / "u"), "--segmenter-dicts", str(dicts)]) == 2
    assert "--segmenter-dicts needs --pre-segmenter" in capsys.readouterr().err
