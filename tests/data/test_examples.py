"""ExampleBuilder: layout, the official proportions (10% one segment, the 50% coin at the
first segment's boundary, 5% random target lengths) within binomial bounds, documents never
mixed, truncation, determinism."""

import math
import random

import pytest

from electra_fast.data import ExampleBuilder

CLS, SEP = 1, 2


def one_token_per_line(line: str) -> list[int]:
    return [int(word) for word in line.split()]


def build(lines, max_length=128, seed=0):
    builder = ExampleBuilder(one_token_per_line, max_length, CLS, SEP, random.Random(seed))
    examples = [e for line in lines if (e := builder.add_line(line)) is not None]
    last = builder.flush()
    return examples + ([last] if last else [])


def assert_binomial(hits, trials, p, what):
    sigma = math.sqrt(trials * p * (1 - p))
    assert abs(hits - trials * p) <= 5 * sigma, f"{what}: {hits}/{trials}, expected p={p}"


def test_layout_and_token_types():
    examples = build([" ".join(str(10 + i) for i in range(n)) for n in (7, 30, 50, 3, 90)] * 20)
    for e in examples:
        ids, cut = e.input_ids, e.first_length
        assert ids[0] == CLS and ids[cut - 1] == SEP and ids[-1] == SEP
        assert len(ids) <= 128 and CLS not in ids[1:]
        assert SEP not in ids[1 : cut - 1] and SEP not in ids[cut:-1]
        types = e.token_type_ids()
        assert types == [0] * cut + [1] * (len(ids) - cut)


def test_official_proportions():
    """One-token sentences: an example of target 128 holds 128 tokens; its first segment gets
    61 or 62 of them (the coin), or all of them (126 after truncation) for a single segment.
    (A random target of 125 also makes 128-token examples, with 60 or 61: rare, within bounds.)"""
    examples = build(["7"] * 400_000)
    full = [e for e in examples if len(e.input_ids) == 128]
    single = sum(e.first_length == 128 for e in full)
    assert_binomial(single, len(full), 0.1, "one segment")
    first = [e.first_length - 2 for e in full if e.first_length != 128]
    assert set(first) <= {60, 61, 62}
    coin = [n for n in first if n in (61, 62)]
    assert_binomial(coin.count(62), len(coin), 0.5, "the overflowing sentence goes first")
    # After each example, 5% of targets are drawn from [5, 128]; all but 128 are shorter.
    short = sum(len(e.input_ids) < 128 for e in examples[:-1])
    assert_binomial(short, len(examples) - 1, 0.05 * 123 / 124, "random target lengths")


def test_documents_are_never_mixed():
    lines = []
    for doc in range(200):
        lines += [" ".join([str(100 + doc)] * 9)] * 3 + [""]
    for e in build(lines):
        words = set(e.input_ids) - {CLS, SEP}
        assert len(words) == 1, words


def test_a_line_longer_than_max_length_is_truncated():
    (e,) = build([" ".join(["5"] * 1000)], max_length=32)
    assert len(e.input_ids) == 32 and e.first_length == 32


def test_same_seed_same_examples():
    lines = [" ".join(["3"] * n) for n in range(1, 60)] * 30
    assert build(lines, seed=4) == build(lines, seed=4)
    assert build(lines, seed=4) != build(lines, seed=5)


def test_max_length_too_small():
    with pytest.raises(ValueError, match="max_length"):
        ExampleBuilder(one_token_per_line, 4, CLS, SEP, random.Random(0))
