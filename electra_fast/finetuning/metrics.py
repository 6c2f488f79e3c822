"""Evaluation metrics. Question answering: SQuAD's official exact match and F1 (answers
normalised by lower-casing and removing punctuation, English articles and extra spaces; F1
over the words both answers share), and the same F1 over characters for languages written
without spaces (Japanese, Chinese), where a whole answer is one "word". Classification:
accuracy, F1, Matthews correlation; regression: Pearson and Spearman correlation. Tagging:
span precision, recall and F1, or word accuracy."""

from __future__ import annotations

import math
import re
import statistics
import string
from collections import Counter
from collections.abc import Sequence

from electra_fast.finetuning.tagging import span_labels

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
F1_UNITS = ("word", "char")


def normalize_answer(text: str) -> str:
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _units(text: str, unit: str) -> list[str]:
    normalized = normalize_answer(text)
    return normalized.split() if unit == "word" else [c for c in normalized if c != " "]


def exact_match(gold: str, prediction: str) -> float:
    return float(normalize_answer(gold) == normalize_answer(prediction))


def f1_score(gold: str, prediction: str, unit: str = "word") -> float:
    """SQuAD's F1 between two answers; an empty answer (no answer) scores 1 only against an
    empty one."""
    gold_units, predicted = _units(gold, unit), _units(prediction, unit)
    if not gold_units or not predicted:
        return float(gold_units == predicted)
    same = sum((Counter(gold_units) & Counter(predicted)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(gold_units)
    return 2 * precision * recall / (precision + recall)


def squad_scores(
    golds: dict[str, list[str]], predictions: dict[str, str], unit: str = "word"
) -> dict[str, float]:
    """exact and f1 (percent, the best over each question's gold answers; a question with no
    gold answer expects the empty prediction), with HasAns/NoAns splits when both occur. A
    question missing from `predictions` scores 0, as in the official script."""
    exact, f1, has_answer = _question_scores(golds, predictions, unit)
    scores = {"exact": _percent(exact.values()), "f1": _percent(f1.values()), "total": len(golds)}
    for name, want in (("HasAns", True), ("NoAns", False)):
        ids = [q for q in golds if has_answer[q] == want]
        if ids and len(ids) < len(golds):
            scores[f"{name}_exact"] = _percent(exact[q] for q in ids)
            scores[f"{name}_f1"] = _percent(f1[q] for q in ids)
            scores[f"{name}_total"] = len(ids)
    return scores


def best_thresholds(
    golds: dict[str, list[str]],
    answers: dict[str, str],
    null_odds: dict[str, float],
    unit: str = "word",
) -> dict[str, float]:
    """SQuAD 2.0's best_exact and best_f1: the scores the best no-answer threshold would give,
    and that threshold (answer "" when a question's null odds exceed it), searched as the
    official evaluation's find_best_thresh does. `answers` are each question's best non-empty
    answer, before any threshold. The search starts from answering nothing (threshold 0.0, as
    officially, whatever the odds) and admits the questions in increasing order of their null
    odds; a question missing from `null_odds` is never answered."""
    exact, f1, has_answer = _question_scores(golds, answers, unit)
    order = sorted((q for q in null_odds if q in golds), key=null_odds.__getitem__)
    result = {}
    for name, scores in (("exact", exact), ("f1", f1)):
        current = best = sum(not has_answer[q] for q in golds)  # every question left unanswered
        threshold = 0.0
        for qid in order:
            # Answering it gains its score, or loses the empty answer's point if it had none.
            current += scores[qid] if has_answer[qid] else -float(bool(answers.get(qid)))
            if current > best:
                best, threshold = current, null_odds[qid]
        result[f"best_{name}"] = 100.0 * best / len(golds)
        result[f"best_{name}_thresh"] = threshold
    return result


def _question_scores(golds, predictions, unit):
    """Each question's exact and F1 against its best gold answer, and whether it has one."""
    if unit not in F1_UNITS:
        raise ValueError(f"f1 unit must be one of {F1_UNITS}, got {unit!r}")
    if not golds:
        raise ValueError("no questions to score")
    exact, f1, has_answer = {}, {}, {}
    for qid, answers in golds.items():
        answers = [a for a in answers if normalize_answer(a)] or [""]
        has_answer[qid] = answers != [""]
        prediction = predictions.get(qid)
        if prediction is None:
            exact[qid] = f1[qid] = 0.0
            continue
        exact[qid] = max(exact_match(a, prediction) for a in answers)
        f1[qid] = max(f1_score(a, prediction, unit) for a in answers)
    return exact, f1, has_answer


def _percent(values) -> float:
    values = list(values)
    return 100.0 * sum(values) / len(values)


def classification_scores(labels: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """accuracy, f1 (of class 1 with two classes, as GLUE's MRPC and QQP; else the macro
    average over the classes) and Matthews correlation (CoLA's metric; multi-class R_K)."""
    if len(labels) != len(predictions) or not labels:
        raise ValueError(f"need as many predictions as labels (got {len(predictions)} and "
                         f"{len(labels)}), and at least one")  # fmt: skip
    classes = sorted(set(labels) | set(predictions))
    accuracy = sum(a == b for a, b in zip(labels, predictions, strict=True)) / len(labels)

    def f1_of(c):
        tp = sum(a == c and b == c for a, b in zip(labels, predictions, strict=True))
        fp = sum(a != c and b == c for a, b in zip(labels, predictions, strict=True))
        fn = sum(a == c and b != c for a, b in zip(labels, predictions, strict=True))
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0

    binary = set(classes) <= {0, 1}
    f1 = f1_of(1) if binary else sum(map(f1_of, classes)) / len(classes)
    return {"accuracy": accuracy, "f1": f1, "mcc": _matthews(labels, predictions, classes)}


def _matthews(labels, predictions, classes) -> float:
    # Gorodkin's R_K, which is the usual MCC for two classes.
    n = len(labels)
    correct = sum(a == b for a, b in zip(labels, predictions, strict=True))
    true_counts, predicted_counts = Counter(labels), Counter(predictions)
    products = sum(true_counts[c] * predicted_counts[c] for c in classes)
    numerator = correct * n - products
    denominator = math.sqrt(n * n - sum(predicted_counts[c] ** 2 for c in classes)) * math.sqrt(
        n * n - sum(true_counts[c] ** 2 for c in classes)
    )
    return numerator / denominator if denominator else 0.0


def span_scores(
    golds: Sequence[Sequence[str]], predictions: Sequence[Sequence[str]]
) -> dict[str, float]:
    """precision, recall and f1 of the spans the predicted tags mark against the gold ones,
    counted over all sentences as the official EntityLevelF1Scorer does (a span counts when its
    words and type both match; tags are read by tagging.span_labels)."""
    _check_sentences(golds, predictions)
    correct = predicted = gold = 0
    for gold_tags, predicted_tags in zip(golds, predictions, strict=True):
        want, got = set(span_labels(list(gold_tags))), set(span_labels(list(predicted_tags)))
        correct, predicted, gold = correct + len(want & got), predicted + len(got), gold + len(want)
    precision = correct / predicted if correct else 0.0
    recall = correct / gold if correct else 0.0
    f1 = 2 * precision * recall / (precision + recall) if correct else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "spans": gold}


def word_accuracy(
    golds: Sequence[Sequence[str]], predictions: Sequence[Sequence[str]]
) -> dict[str, float]:
    """accuracy: the share of words whose predicted tag is the gold one."""
    _check_sentences(golds, predictions)
    pairs = [
        pair for g, p in zip(golds, predictions, strict=True) for pair in zip(g, p, strict=True)
    ]
    return {"accuracy": sum(a == b for a, b in pairs) / len(pairs), "words": len(pairs)}


def _check_sentences(golds, predictions) -> None:
    if len(golds) != len(predictions) or not golds:
        raise ValueError(f"need as many predicted sentences as gold ones (got {len(predictions)} "
                         f"and {len(golds)}), and at least one")  # fmt: skip
    for i, (g, p) in enumerate(zip(golds, predictions, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i} has {len(g)} gold tags but {len(p)} predicted")


def regression_scores(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
    """pearson and spearman (STS-B's metrics) and the mean squared error."""
    if len(targets) != len(predictions) or len(targets) < 2:
        raise ValueError("need as many predictions as targets, and at least two")
    mse = sum((a - b) ** 2 for a, b in zip(targets, predictions, strict=True)) / len(targets)
    return {
        "pearson": _pearson(targets, predictions),
        "spearman": _pearson(_ranks(targets), _ranks(predictions)),
        "mse": mse,
    }


def _pearson(x, y) -> float:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else 0.0


def _ranks(values) -> list[float]:
    """Average ranks (ties share the mean of their positions), as Spearman's rho needs."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def summarize_trials(trials: Sequence[dict]) -> dict:
    """Every trial's scores and, for each numeric score, their mean, median, min and max (the
    ELECTRA paper reports the median of 10 finetuning runs of one checkpoint)."""
    names = [
        k for k, v in trials[0].items() if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    stats = {"mean": statistics.fmean, "median": statistics.median, "min": min, "max": max}
    return {
        "trials": list(trials),
        **{stat: {k: fn([t[k] for t in trials]) for k in names} for stat, fn in stats.items()},
    }
