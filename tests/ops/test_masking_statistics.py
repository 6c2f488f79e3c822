"""mask_tokens' randomness over 1e5 sequences: proportions within binomial bounds, uniformity
by chi-square. Bounds are wide (5 sigma, p > 1e-6) so that a correct implementation fails about
once in a million runs, while a biased one (an off-by-one, a skewed draw) fails every time."""

import math

import pytest
import torch
from scipy.stats import chi2

from tests.ops.masking_cases import CLS, MASK, PAD, SEP, run

OP = "mask_tokens"

DRAWS = 100_000
SPECIALS = [PAD, CLS, SEP]
VOCAB = 40


def assert_binomial(hits: int, trials: int, p: float, what: str):
    sigma = math.sqrt(trials * p * (1 - p))
    assert abs(hits - trials * p) <= 5 * sigma + 1e-9, (
        f"{what}: {hits} of {trials}, expected {trials * p:.0f} +- {5 * sigma:.0f}"
    )


def assert_uniform(counts: torch.Tensor, what: str):
    counts = counts.double()
    expected = counts.sum() / counts.numel()
    statistic = float(((counts - expected) ** 2 / expected).sum())
    p_value = chi2.sf(statistic, counts.numel() - 1)
    assert p_value > 1e-6, f"{what}: chi-square {statistic:.1f}, p = {p_value:.2g}"


def corpus(device):
    """DRAWS copies of one row: [CLS] 12 tokens [SEP] with a [MASK] among them, then padding."""
    row = torch.tensor([CLS, 5, 6, 7, MASK, 8, 9, 10, 11, 12, 13, 14, 15, SEP, PAD, PAD])
    attention = (row != PAD).long()
    return row.repeat(DRAWS, 1).to(device), attention.repeat(DRAWS, 1).to(device)


@pytest.mark.slow
def test_positions_are_uniform_and_replacements_proportional(implementation, device):
    ids, attention = corpus(device)
    masked, positions, labels, weights = (
        t.cpu()
        for t in run(
            implementation,
            ids,
            attention,
            seed=31337,
            vocab_size=VOCAB,
            mask_prob=0.2,
            max_predictions=4,
            replace_prob=0.7,
            random_prob=0.2,
        )
    )
    # 14 tokens at 0.2 is 2.8: three positions in every row, among the 11 candidates.
    assert weights.sum(1).eq(3).all()
    chosen = positions[:, :3]
    per_position = torch.bincount(chosen.flatten(), minlength=16)
    candidates = [1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12]
    assert per_position.sum() == per_position[candidates].sum()
    assert_uniform(per_position[candidates], "chosen positions")
    # Whole draws too: each of the C(11, 3) = 165 subsets of candidates as likely as another.
    subsets = (1 << chosen).sum(1)
    subset_counts = torch.bincount(subsets, minlength=1 << 16)
    assert int((subset_counts > 0).sum()) == math.comb(11, 3)
    assert_uniform(subset_counts[subset_counts > 0], "chosen subsets")

    new = masked.long().gather(1, chosen)
    original = ids.cpu().gather(1, chosen)
    trials = new.numel()
    is_mask = new == MASK
    is_kept = (new == original) & ~is_mask
    is_random = ~is_mask & ~is_kept
    assert_binomial(int(is_mask.sum()), trials, 0.7, "[MASK] replacements")
    # A random draw can land on the original token: P(kept) = 0.1 + 0.2 / (non-special ids).
    non_special = VOCAB - 4
    assert_binomial(int(is_kept.sum()), trials, 0.1 + 0.2 / non_special, "kept tokens")
    assert_binomial(int(is_random.sum()), trials, 0.2 * (1 - 1 / non_special), "random tokens")
    assert not torch.isin(new[is_random], torch.tensor([PAD, CLS, SEP])).any()


@pytest.mark.slow
def test_random_tokens_are_uniform_over_non_special_ids(implementation, device):
    ids, attention = corpus(device)
    masked, positions, _, _ = run(
        implementation,
        ids,
        attention,
        seed=4242,
        vocab_size=VOCAB,
        mask_prob=0.2,
        max_predictions=4,
        replace_prob=0.0,
        random_prob=1.0,
    )
    drawn = masked.long().gather(1, positions[:, :3]).cpu().flatten()
    counts = torch.bincount(drawn, minlength=VOCAB)
    assert counts[[PAD, CLS, SEP, MASK]].eq(0).all()
    assert_uniform(counts[4:], "random token ids")


@pytest.mark.slow
def test_bernoulli_counts_are_binomial(implementation, device):
    ids, attention = corpus(device)
    _, _, _, weights = run(
        implementation,
        ids,
        attention,
        seed=99,
        mask_prob=0.3,
        max_predictions=16,
        bernoulli=True,
        vocab_size=VOCAB,
    )
    counts = weights.sum(1).cpu()
    # Each of the 11 candidates independently with p = 0.3; N = 16 never caps.
    assert_binomial(int(counts.sum()), 11 * DRAWS, 0.3, "bernoulli choices")
    histogram = torch.bincount(counts.long(), minlength=12)[:12].double()
    expected = torch.tensor([math.comb(11, j) * 0.3**j * 0.7 ** (11 - j) for j in range(12)])
    statistic = float(((histogram - DRAWS * expected) ** 2 / (DRAWS * expected)).sum())
    assert chi2.sf(statistic, 11) > 1e-6, f"per-row counts: chi-square {statistic:.1f}"
