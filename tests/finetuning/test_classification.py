"""Classification data: reading, label vocabularies, [CLS] a [SEP] b [SEP] encoding and the
official pair trimming."""

import json

import pytest

from electra_fast import tokenization
from electra_fast.finetuning import classification
from electra_fast.finetuning.classification import ClassificationExample
from tests.data.corpus_cases import wordpiece

pytest.importorskip("tokenizers")


def official_trim(a: list, b: list, room: int) -> tuple[list, list]:
    """_truncate_seq_pair as the official code writes it."""
    a, b = list(a), list(b)
    while len(a) + len(b) > room:
        (a if len(a) > len(b) else b).pop()
    return a, b


def test_pairs_are_encoded_and_trimmed_as_officially(tmp_path):
    tokenizer = tokenization.load(wordpiece(tmp_path))
    for len_a in (0, 1, 5, 13):
        for len_b in (0, 2, 9, 20):
            a = " ".join(f"w{i}" for i in range(len_a))
            b = " ".join(f"w{100 + i}" for i in range(len_b))
            examples = [ClassificationExample(a, b, "x"), ClassificationExample(a, None, "x")]
            (pair_ids, pair_types), (single_ids, single_types) = classification.encode(
                examples, tokenizer, max_seq_length=15
            )
            kept_a, kept_b = official_trim(tokenizer.encode(a), tokenizer.encode(b), 12)
            cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
            assert pair_ids == [cls, *kept_a, sep, *kept_b, sep]
            assert pair_types == [0] * (len(kept_a) + 2) + [1] * (len(kept_b) + 1)
            assert single_ids == [cls, *tokenizer.encode(a)[:13], sep]
            assert single_types == [0] * len(single_ids)


def test_reading_jsonl_csv_tsv(tmp_path):
    rows = [{"s1": "a b", "s2": "c", "y": "1"}, {"s1": "d, e", "s2": "f", "y": "0"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    (tmp_path / "d.csv").write_text('s1,s2,y\na b,c,1\n"d, e",f,0\n')
    (tmp_path / "d.tsv").write_text("s1\ts2\ty\na b\tc\t1\nd, e\tf\t0\n")
    for name in ("d.jsonl", "d.csv", "d.tsv"):
        examples = classification.read_examples(
            tmp_path / name, text_field="s1", pair_field="s2", label_field="y"
        )
        assert [(e.text, e.text_pair, e.label) for e in examples] == [
            ("a b", "c", "1"), ("d, e", "f", "0")]  # fmt: skip
    assert classification.label_vocabulary(examples) == ["0", "1"]
    numbers = [ClassificationExample("t", None, v) for v in ("10", "9", "-1")]
    assert classification.label_vocabulary(numbers) == ["-1", "9", "10"]  # numeric order
    with pytest.raises(ValueError, match="row 1 has no text field 'text'"):
        classification.read_examples(tmp_path / "d.csv")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not JSON"):
        classification.read_examples(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="expected a .jsonl, .csv or .tsv"):
        classification.read_examples(tmp_path / "d.json")


def test_pair_trimming_equals_the_official_loop_everywhere():
    for len_a in range(25):
        for len_b in range(25):
            for room in range(30):
                kept = official_trim(range(len_a), range(len_b), room)
                expected = tuple(map(len, kept))
                assert classification._trim_pair(len_a, len_b, room) == expected
