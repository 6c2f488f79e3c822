"""SQuAD's exact match and F1 (word and character units), and the classification and
regression metrics, against hand-computed values and scipy/numpy."""

import math

import numpy as np
import pytest

from electra_fast.finetuning.metrics import (
    best_thresholds,
    classification_scores,
    exact_match,
    f1_score,
    normalize_answer,
    regression_scores,
    squad_scores,
    summarize_trials,
)
from electra_fast.finetuning.squad import abstain


def test_normalisation_and_answer_scores():
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert normalize_answer("an apple-pie") == "applepie"  # punctuation is removed, not spaced
    assert exact_match("Paris", "the paris.") == 1.0
    assert exact_match("Paris", "Paris, France") == 0.0
    # gold {cat, sat}, prediction {cat, sat, down}: precision 2/3, recall 1.
    assert f1_score("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert f1_score("cat", "dog") == 0.0
    assert f1_score("", "") == 1.0 and f1_score("", "x") == 0.0 and f1_score("x", "") == 0.0
    # Japanese: one "word" each, so word F1 is all or nothing; characters give 2/3 recall.
    assert f1_score("東京都", "東京") == 0.0
    assert f1_score("東京都", "東京", unit="char") == pytest.approx(0.8)


def test_squad_scores_best_gold_missing_predictions_and_no_answer_split():
    golds = {"a": ["Paris", "the city of Paris"], "b": [], "c": ["1895"], "d": ["x y"]}
    predictions = {"a": "Paris city", "b": "", "c": "1895"}  # d missing: scores 0
    scores = squad_scores(golds, predictions)
    # a: exact 0; f1 2/3 against "Paris", 0.8 against "city of paris" (2 of 2 predicted, 2 of
    # 3 gold): the best, 0.8. b: 1/1; c: 1/1; d: 0/0.
    assert scores["exact"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx(70.0)
    assert scores["total"] == 4
    assert scores["HasAns_total"] == 3 and scores["NoAns_total"] == 1
    assert scores["NoAns_exact"] == 100.0
    assert scores["HasAns_f1"] == pytest.approx(60.0)
    with pytest.raises(ValueError, match="f1 unit"):
        squad_scores(golds, predictions, unit="byte")


def test_best_thresholds_by_hand():
    golds = {"a": ["x"], "b": [], "c": ["y z"], "d": [], "e": ["p q r s"]}
    found = {"a": "x", "b": "w", "c": "y z", "d": "", "e": "p q r"}  # before any threshold
    odds = {"a": -3.0, "b": -1.0, "c": 0.5, "e": 1.0, "d": 2.0}
    # Answering nothing gets b and d right: 2 of 5. Admitting by increasing odds, exact goes
    # a: 3, b: 2 (a wrong answer to b), c: 3, e: 3 (exact 0), d: 3 (its "" stays right), so
    # its best is 3 first reached at a's odds. F1 adds e's 6/7 (precision 1, recall 3/4).
    scores = best_thresholds(golds, found, odds)
    assert scores["best_exact"] == pytest.approx(60.0) and scores["best_exact_thresh"] == -3.0
    assert scores["best_f1"] == pytest.approx(100 * (3 + 6 / 7) / 5)
    assert scores["best_f1_thresh"] == 1.0
    # Every odds above zero and nothing worth answering: the official start, threshold 0.0.
    worst = best_thresholds({"b": []}, {"b": "w"}, {"b": 1.0})
    assert worst == {"best_exact": 100.0, "best_exact_thresh": 0.0,
                     "best_f1": 100.0, "best_f1_thresh": 0.0}  # fmt: skip


def test_best_thresholds_equal_the_best_of_every_threshold():
    # Oracle: score the answers under each threshold that separates the odds, and take the
    # best; the threshold found must give that score when applied.
    rng = np.random.default_rng(1)
    words = ["a1", "b2", "c3", "d4"]
    for _ in range(200):
        n = int(rng.integers(1, 9))
        golds = {f"q{i}": [] if rng.random() < 0.4 else [" ".join(rng.choice(words, 2))]
                 for i in range(n)}  # fmt: skip
        found = {q: "" if rng.random() < 0.2 else " ".join(rng.choice(words, 2)) for q in golds}
        odds = dict(zip(golds, rng.permutation(n) - n / 2 + 0.5, strict=True))
        got = best_thresholds(golds, found, odds)
        for name in ("exact", "f1"):
            cuts = [min(odds.values()) - 1, *odds.values()]
            value = {t: squad_scores(golds, abstain(found, odds, t))[name] for t in cuts}
            assert got[f"best_{name}"] == pytest.approx(max(value.values()))
            if got[f"best_{name}"] > value[cuts[0]]:  # better than answering nothing
                assert value[got[f"best_{name}_thresh"]] == pytest.approx(max(value.values()))


def test_binary_classification_scores_by_hand():
    # TP 1, FN 1, TN 2, FP 0.
    scores = classification_scores([1, 1, 0, 0], [1, 0, 0, 0])
    assert scores["accuracy"] == 0.75
    assert scores["f1"] == pytest.approx(2 / 3)
    assert scores["mcc"] == pytest.approx(2 / math.sqrt(12))


def test_multiclass_mcc_and_macro_f1_against_numpy():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    predictions = np.where(rng.random(300) < 0.6, labels, rng.integers(0, 4, 300))
    scores = classification_scores(labels.tolist(), predictions.tolist())
    # MCC as the correlation of the one-hot matrices (Gorodkin): cov(X, Y) / sqrt(cov cov).
    x, y = np.eye(4)[labels], np.eye(4)[predictions]
    x, y = x - x.mean(0), y - y.mean(0)
    expected = (x * y).sum() / math.sqrt((x * x).sum() * (y * y).sum())
    assert scores["mcc"] == pytest.approx(expected)
    f1s = []
    for c in range(4):
        tp = np.sum((labels == c) & (predictions == c))
        precision, recall = tp / np.sum(predictions == c), tp / np.sum(labels == c)
        f1s.append(2 * precision * recall / (precision + recall))
    assert scores["f1"] == pytest.approx(np.mean(f1s))
    with pytest.raises(ValueError, match="as many predictions"):
        classification_scores([1, 0], [1])


def test_regression_scores_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 6, 200).astype(float)  # many ties, as STS-B's ratings
    predictions = targets + rng.normal(0, 1.5, 200)
    scores = regression_scores(targets.tolist(), predictions.tolist())
    assert scores["pearson"] == pytest.approx(stats.pearsonr(targets, predictions)[0])
    assert scores["spearman"] == pytest.approx(stats.spearmanr(targets, predictions)[0])
    assert scores["mse"] == pytest.approx(np.mean((targets - predictions) ** 2))


def test_trial_summary_by_hand():
    trials = [
        {"accuracy": 60.0, "f1": 0.5, "best_thresh": -1.0},
        {"accuracy": 70.0, "f1": 0.9, "best_thresh": 0.0},
        {"accuracy": 66.0, "f1": 0.7, "best_thresh": 2.0},
        {"accuracy": 90.0, "f1": 0.6, "best_thresh": 1.0},
    ]
    summary = summarize_trials(trials)
    assert summary["trials"] == trials
    assert summary["mean"] == pytest.approx({"accuracy": 71.5, "f1": 0.675, "best_thresh": 0.5})
    # Four trials: the median is the mean of the middle two.
    assert summary["median"] == pytest.approx({"accuracy": 68.0, "f1": 0.65, "best_thresh": 0.5})
    assert summary["min"] == {"accuracy": 60.0, "f1": 0.5, "best_thresh": -1.0}
    assert summary["max"] == {"accuracy": 90.0, "f1": 0.9, "best_thresh": 2.0}
