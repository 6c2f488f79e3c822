"""SQuAD's exact match and F1 (word and character units), and the classification and
regression metrics, against hand-computed values and scipy/numpy."""

import math

import numpy as np
import pytest

from electra_fast.finetuning.metrics import (
    classification_scores,
    exact_match,
    f1_score,
    normalize_answer,
    regression_scores,
    squad_scores,
)


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
