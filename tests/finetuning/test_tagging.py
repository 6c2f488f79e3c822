"""Tagging data: CoNLL and JSON Lines reading, the official span reading of BIO/IOB1/BIOES tags
(hand-worked cases and round trips through encodings written here), the label set, word-to-
token alignment with truncation, and the span and word scores worked out by hand."""

import json
import random

import pytest
import torch

from electra_fast.finetuning.metrics import span_scores, word_accuracy
from electra_fast.finetuning.tagging import (
    IGNORED,
    TaggedSentence,
    bioes_tags,
    collate,
    detect_level,
    encode,
    label_vocabulary,
    read_tagged,
    span_labels,
    training_tags,
)


@pytest.mark.parametrize(
    ("tags", "spans"),
    [
        (["B-PER", "I-PER", "O", "B-LOC"], [(0, 1, "PER"), (3, 3, "LOC")]),
        (["O", "O"], []),
        # IOB1: I- after O opens a span, B- only splits two touching spans of a type.
        (["I-PER", "I-PER", "B-PER", "O"], [(0, 1, "PER"), (2, 2, "PER")]),
        (
            ["S-LOC", "B-ORG", "E-ORG", "O", "S-MISC"],
            [(0, 0, "LOC"), (1, 2, "ORG"), (4, 4, "MISC")],
        ),  # fmt: skip
        # The official reading's leniencies, kept so that scores match its: a change of type
        # without B- continues the span, which takes the type of its last tag, and E- does not
        # close a span that an I- continues.
        (["B-PER", "I-LOC", "O"], [(0, 1, "LOC")]),
        (["B-X", "E-X", "I-X"], [(0, 2, "X")]),
        (["O", "I-X"], [(1, 1, "X")]),
        ([], []),
    ],
)
def test_span_labels_read_tags_as_the_official_code(tags, spans):
    assert span_labels(tags) == spans


def random_spans(rng, length):
    spans, at = [], rng.randrange(3)
    while at < length:
        end = min(length - 1, at + rng.randrange(4))
        spans.append((at, end, rng.choice(["PER", "LOC", "B-ORG"])))  # a type may hold "-"
        at = end + 1 + rng.randrange(3)
    return spans


def test_bio_and_bioes_round_trips():
    rng = random.Random(0)
    for _ in range(300):
        length = rng.randint(1, 15)
        spans = random_spans(rng, length)
        bio = ["O"] * length
        for first, last, kind in spans:
            bio[first : last + 1] = [f"B-{kind}"] + [f"I-{kind}"] * (last - first)
        assert span_labels(bio) == spans
        assert span_labels(bioes_tags(spans, length)) == spans


def test_bioes_tags_by_hand():
    spans = [(0, 0, "A"), (2, 4, "B")]
    assert bioes_tags(spans, 6) == ["S-A", "O", "B-B", "I-B", "E-B", "O"]


def test_levels_and_label_sets():
    ner = [TaggedSentence(["a", "b", "c"], ["B-PER", "I-PER", "O"])]
    pos = [TaggedSentence(["a", "b"], ["NN", "-LRB-"])]
    assert detect_level(ner) == "span" and detect_level(pos) == "token"
    assert training_tags(ner[0], "span") == ["B-PER", "E-PER", "O"]
    assert label_vocabulary(ner, "span") == ["B-PER", "E-PER", "I-PER", "O", "S-PER"]
    assert label_vocabulary(pos, "token") == ["-LRB-", "NN"]
    with pytest.raises(ValueError, match="tag 'NN' is not O or B-/I-/E-/S-.*tagging_level"):
        label_vocabulary(pos, "span")


def test_read_conll_and_jsonl(tmp_path):
    conll = tmp_path / "train.txt"
    # CoNLL-2003's four columns (word, POS, chunk, entity): the last column is the tag.
    conll.write_text(
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n\n"
        "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER"
    )
    sentences = read_tagged(conll)
    assert sentences == [
        TaggedSentence(["EU", "rejects"], ["B-ORG", "O"]),
        TaggedSentence(["Peter", "Blackburn"], ["B-PER", "I-PER"]),
    ]
    words_only = tmp_path / "test.txt"
    words_only.write_text("EU\nrejects\n\nPeter\n")
    assert [s.tags for s in read_tagged(words_only)] == [None, None]
    lines = tmp_path / "train.jsonl"
    lines.write_text(json.dumps({"tokens": ["Hà_Nội", "đẹp"], "tags": ["B-LOC", "O"]}) + "\n\n")
    assert read_tagged(lines) == [TaggedSentence(["Hà_Nội", "đẹp"], ["B-LOC", "O"])]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"tokens": ["a", "b"], "tags": ["O"]}', r"train.jsonl:1: 1 tags for 2 tokens"),
        ('{"tokens": []}', "'tokens' must be a non-empty list"),
        ("{", "train.jsonl:1: not JSON"),
        ("\n", "holds no sentences"),
    ],
)
def test_bad_jsonl_is_named(tmp_path, text, message):
    (tmp_path / "train.jsonl").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_tagged(tmp_path / "train.jsonl")


def test_bad_conll_is_named(tmp_path):
    (tmp_path / "a.txt").write_text("a O\nb\n")
    with pytest.raises(ValueError, match=r"a.txt:2: a sentence where some words have a tag"):
        read_tagged(tmp_path / "a.txt")
    (tmp_path / "b.txt").write_text("a O\n\nb\n")
    with pytest.raises(ValueError, match="some sentences have tags and others have none"):
        read_tagged(tmp_path / "b.txt")


class CountingTokenizer:
    """Word "tN" becomes N tokens 100+N, 200+N, ...; ids 1-3 are [UNK] [CLS] [SEP]."""

    unk_token_id, cls_token_id, sep_token_id, pad_token_id = 1, 2, 3, 0

    def encode_batch(self, words):
        return [[100 * (k + 1) + int(w[1:]) for k in range(int(w[1:]))] for w in words]


def test_each_word_is_labelled_at_its_first_token():
    sentence = TaggedSentence(["t2", "t0", "t3", "t1"], None)
    (feature,) = encode([sentence], CountingTokenizer(), max_seq_length=20)
    assert feature.input_ids == [2, 102, 202, 1, 103, 203, 303, 101, 3]
    assert feature.positions == [1, 3, 4, 7]  # t0 has no token: [UNK] stands in


def test_a_long_sentence_keeps_the_words_whose_first_token_fits():
    sentence = TaggedSentence(["t2", "t3", "t1"], None)
    (feature,) = encode([sentence], CountingTokenizer(), max_seq_length=6)
    # [CLS] t2 t2 | t3 t3 (its third token and the word t1 have no room) [SEP]
    assert feature.input_ids == [2, 102, 202, 103, 203, 3]
    assert feature.positions == [1, 3]
    batch = collate([feature], [[7, 8, 9]], pad_id=0)
    assert batch["labels"].tolist() == [[IGNORED, 7, IGNORED, 8, IGNORED, IGNORED]]
    with pytest.raises(ValueError, match="max_seq_length must be at least 3, got 2"):
        encode([sentence], CountingTokenizer(), max_seq_length=2)


def test_collate_pads_and_ignores_all_but_first_tokens():
    features = encode(
        [TaggedSentence(["t1", "t2"], None), TaggedSentence(["t1"], None)],
        CountingTokenizer(),
        max_seq_length=10,
    )
    batch = collate(features, [[4, 5], [6]], pad_id=0)
    assert batch["input_ids"].tolist() == [[2, 101, 102, 202, 3], [2, 101, 3, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["token_type_ids"].eq(0).all()
    assert batch["labels"].tolist() == [
        [IGNORED, 4, 5, IGNORED, IGNORED],
        [IGNORED, 6, IGNORED, IGNORED, IGNORED],
    ]


def test_span_scores_by_hand():
    golds = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    # Sentence 1: PER right, LOC typed wrong; sentence 2: ORG missed, a MISC invented.
    predicted = [["B-PER", "E-PER", "O", "S-ORG"], ["S-MISC", "O"]]
    scores = span_scores(golds, predicted)
    assert scores["precision"] == pytest.approx(1 / 3)  # 1 of 3 predicted spans
    assert scores["recall"] == pytest.approx(1 / 3)  # 1 of 3 gold spans
    assert scores["f1"] == pytest.approx(1 / 3) and scores["spans"] == 3
    assert span_scores([["O"]], [["O"]])["f1"] == 0.0  # no span to find: nothing found
    with pytest.raises(ValueError, match="sentence 0 has 1 gold tags but 2 predicted"):
        span_scores([["O"]], [["O", "O"]])


def test_word_accuracy_by_hand():
    scores = word_accuracy([["NN", "VB"], ["DT"]], [["NN", "NN"], ["DT"]])
    assert scores == {"accuracy": pytest.approx(2 / 3), "words": 3}


def test_the_loss_sums_over_words_and_averages_over_sentences():
    from electra_fast.model.finetuning import ElectraForTokenClassification
    from tests.finetuning.cases import tiny_config

    net = ElectraForTokenClassification(tiny_config(), num_labels=3)
    logits = torch.randn(2, 4, 3)
    labels = torch.tensor([[IGNORED, 0, 2, IGNORED], [IGNORED, 1, IGNORED, IGNORED]])
    log_p = logits.log_softmax(-1)
    by_hand = -(log_p[0, 1, 0] + log_p[0, 2, 2] + log_p[1, 1, 1]) / 2
    torch.testing.assert_close(net.loss(logits, labels), by_hand)
