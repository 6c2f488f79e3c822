"""SQuAD features (windows, targets, widest-context flags) and answer prediction, on a
WordPiece vocabulary where every word w0 .. w199 is one token, so that the expected tokens
follow from the words."""

import json
import random

import pytest

from electra_fast import tokenization
from electra_fast.finetuning import squad
from tests.data.corpus_cases import wordpiece

pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tokenization.load(wordpiece(tmp_path_factory.mktemp("wp")))


def example(words, answer_at, answer_len, qid="q", question="w1 w2 w3"):
    context = " ".join(words)
    start = len(" ".join(words[:answer_at])) + (1 if answer_at else 0)
    text = " ".join(words[answer_at : answer_at + answer_len])
    return squad.QAExample(qid, question, context, [text], start)


def test_windows_cover_every_token_and_one_window_is_widest(tokenizer):
    rng = random.Random(0)
    for n in (1, 5, 37, 120, 301):
        words = [f"w{rng.randrange(200)}" for _ in range(n)]
        ex = example(words, rng.randrange(n), 1)
        features, _ = squad.make_features([ex], tokenizer, max_seq_length=40,
                                          max_query_length=8, doc_stride=11)  # fmt: skip
        covered, widest = {}, {}
        for w, f in enumerate(features):
            assert len(f.input_ids) <= 40
            assert (
                f.input_ids[0] == tokenizer.cls_token_id
                and f.input_ids[4] == tokenizer.sep_token_id
            )
            assert f.input_ids[-1] == tokenizer.sep_token_id
            assert f.token_type_ids == [0] * 5 + [1] * (len(f.input_ids) - 5)
            for position, span in enumerate(f.spans):
                if span is None:
                    continue
                covered.setdefault(span, []).append((w, position))
                if f.max_context[position]:
                    widest.setdefault(span, []).append(w)
        # Each word is one token: its span is the word's characters.
        spans = sorted(covered)
        assert [ex.context[s:e] for s, e in spans] == words
        assert all(len(widest.get(s, [])) == 1 for s in spans)
        # The widest window maximises min(left, right) context (+0.01 * its length).
        for span, holders in covered.items():

            def score(item, features=features):
                w, position = item
                f = features[w]
                left = position - 5
                right = len(f.input_ids) - 2 - position
                return min(left, right) + 0.01 * (len(f.input_ids) - 6)

            best = max(holders, key=score)  # max keeps the first of equal scores
            assert widest[span] == [best[0]]


def test_training_targets_recover_the_answer_text(tokenizer):
    rng = random.Random(1)
    examples = []
    for i in range(60):
        words = [f"w{rng.randrange(200)}" for _ in range(rng.randint(3, 90))]
        at = rng.randrange(len(words))
        examples.append(example(words, at, min(rng.randint(1, 4), len(words) - at), qid=str(i)))
    features, stats = squad.make_features(
        examples, tokenizer, max_seq_length=32, max_query_length=6, doc_stride=9, training=True
    )
    assert stats.skipped == [] and stats.features == len(features)
    found = set()
    for f in features:
        ex = examples[f.example_index]
        if f.has_answer:
            begin, end = f.spans[f.start_position][0], f.spans[f.end_position][1]
            assert ex.context[begin:end] == ex.answers[0]
            found.add(f.example_index)
        else:
            assert f.start_position == f.end_position == 0  # [CLS]
    assert found == set(range(60))  # every answer lies whole in some window


def test_misplaced_answers_are_skipped_and_unanswerable_target_cls(tokenizer):
    good = example(["w1", "w2", "w3"], 1, 1)
    bad = squad.QAExample("bad", "w1", "w1 w2 w3", ["w3"], 0)  # w3 is not at offset 0
    impossible = squad.QAExample("none", "w1", "w1 w2 w3", [], -1)
    features, stats = squad.make_features([good, bad, impossible], tokenizer, training=True)
    assert stats.skipped == ["bad"]
    assert [(f.example_index, f.has_answer, f.start_position) for f in features] == [
        (0, True, 6),  # 0 [CLS], 1-3 the question, 4 [SEP], 5 w1, 6 w2
        (2, False, 0),
    ]
    with pytest.raises(ValueError, match="max_seq_length=5 leaves no room .* 'q' .3 tokens"):
        squad.make_features([good], tokenizer, max_seq_length=5)


def test_predict_picks_the_best_legal_span(tokenizer):
    words = [f"w{i}" for i in range(10, 30)]
    ex = example(words, 3, 2)
    (feature,), _ = squad.make_features([ex], tokenizer, max_seq_length=64)
    n = len(feature.input_ids)
    first = 5  # [CLS] w1 w2 w3 [SEP]
    start, end = [0.0] * n, [0.0] * n
    start[first + 4], end[first + 6] = 5.0, 5.0  # w14 .. w16: the best legal span
    start[first + 8], end[first + 2] = 9.0, 9.0  # w18 .. w12 ends before it starts: illegal
    start[2], end[2] = 20.0, 20.0  # in the question: illegal
    answers, odds = squad.predict([ex], [feature], [start], [end])
    assert answers == {"q": "w14 w15 w16"}
    assert odds["q"] == pytest.approx(0.0 - 10.0)  # [CLS] score 0 minus the span's 10
    answers, _ = squad.predict([ex], [feature], [start], [end], max_answer_length=2)
    assert answers["q"] not in ("w14 w15 w16", "")  # three tokens are now too long
    # SQuAD 2.0: no answer when the [CLS] score beats the best span by more than the threshold.
    start[0] = end[0] = 6.0
    answers, odds = squad.predict([ex], [feature], [start], [end], allow_no_answer=True)
    assert answers["q"] == "" and odds["q"] == pytest.approx(2.0)
    answers, _ = squad.predict([ex], [feature], [start], [end], allow_no_answer=True,
                               null_threshold=2.5)  # fmt: skip
    assert answers["q"] == "w14 w15 w16"
    # With an answerable classifier its logit decides.
    answers, odds = squad.predict([ex], [feature], [start], [end], [3.0], allow_no_answer=True)
    assert answers["q"] == "w14 w15 w16" and odds["q"] == -3.0


def test_predict_uses_the_window_with_the_widest_context(tokenizer):
    words = [f"w{i}" for i in range(100, 160)]
    ex = example(words, 30, 1)
    features, _ = squad.make_features([ex], tokenizer, max_seq_length=30,
                                      max_query_length=4, doc_stride=8)  # fmt: skip
    starts, ends = [], []
    for f in features:
        # Every window scores every token alike, except the one that ranks w105 highest,
        # which is not its widest window for w105: that window must lose.
        s = [0.0] * len(f.input_ids)
        e = [0.0] * len(f.input_ids)
        for p, span in enumerate(f.spans):
            if span and ex.context[span[0] : span[1]] == "w130":
                s[p] = e[p] = 1.0
            if span and ex.context[span[0] : span[1]] == "w105" and not f.max_context[p]:
                s[p] = e[p] = 5.0
        starts.append(s)
        ends.append(e)
    answers, _ = squad.predict([ex], features, starts, ends)
    assert answers["q"] == "w130"


def test_read_squad_v1_v2_and_errors(tmp_path):
    data = {"data": [{"paragraphs": [{"context": "a b c", "qas": [
        {"id": 1, "question": "q?", "answers": [{"text": "b", "answer_start": 2},
                                                 {"text": "b c", "answer_start": 2}]},
        {"id": "x", "question": "r?", "answers": [], "is_impossible": True}]}]}]}  # fmt: skip
    path = tmp_path / "d.json"
    path.write_text(json.dumps(data))
    first, second = squad.read_squad(path)
    assert (first.qid, first.answers, first.answer_start) == ("1", ["b", "b c"], 2)
    assert (second.qid, second.answers, second.answer_start) == ("x", [], -1)
    path.write_text('{"version": 1}')
    with pytest.raises(ValueError, match="not SQuAD-format"):
        squad.read_squad(path)
    path.write_text(json.dumps({"data": [{"paragraphs": [{"qas": []}]}]}))
    with pytest.raises(ValueError, match=r"paragraphs\[0\] has no 'context'"):
        squad.read_squad(path)


def test_predict_joint_sums_the_beams_log_probabilities(tokenizer):
    words = [f"w{i}" for i in range(10, 30)]
    ex = example(words, 3, 2)
    (feature,), _ = squad.make_features([ex], tokenizer, max_seq_length=64)
    first, n = 5, len(feature.input_ids)  # [CLS] w1 w2 w3 [SEP]
    beam = (
        [-0.5, -1.0, -0.1, -0.2],  # start log-probabilities, best first except where illegal:
        [first + 4, first + 2, 2, n + 3],  # w14, w12, a question token, the padding
        [[-0.4, -0.1], [-0.2, -0.3], [0.0, 0.0], [0.0, 0.0]],
        [[first + 6, first + 3], [first + 3, first + 2], [first + 6, 3], [n + 4, first + 6]],
    )
    # w14 .. w16 scores -0.9; w14 .. w13 ends before it starts; w12 .. w13 scores -1.2.
    answers, _ = squad.predict_joint([ex], [feature], [beam])
    assert answers == {"q": "w14 w15 w16"}
    answers, _ = squad.predict_joint([ex], [feature], [beam], max_answer_length=2)
    assert answers == {"q": "w12 w13"}
    answers, odds = squad.predict_joint([ex], [feature], [beam], [-1.0], allow_no_answer=True,
                                        null_threshold=0.5)  # fmt: skip
    assert answers == {"q": ""} and odds == {"q": 1.0}
    with pytest.raises(ValueError, match="only with the answerable classifier"):
        squad.predict_joint([ex], [feature], [beam], allow_no_answer=True)
