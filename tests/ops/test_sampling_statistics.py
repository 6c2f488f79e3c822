"""generator_step's samples over 2e5 rows against softmax(logits / T) by chi-square. The bound
(p > 1e-6) fails a correct implementation about once in a million runs; a biased one (noise
from the wrong Philox word, a temperature applied twice, a skewed uniform) fails every time."""

import pytest
import torch
from scipy.stats import chi2

import electra_fast
from electra_fast import _extension

OP = "generator_step"
DRAWS = 200_000
LOGITS = [0.0, 1.0, -1.0, 2.0, 0.5, -2.0, 1.5]  # V = 7: the last Philox group is partial


def assert_distribution(counts: torch.Tensor, probabilities: torch.Tensor, what: str):
    expected = probabilities.double() * counts.sum()
    keep = expected > 0
    statistic = float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    p_value = chi2.sf(statistic, int(keep.sum()) - 1)
    assert p_value > 1e-6, f"{what}: chi-square {statistic:.1f}, p = {p_value:.2g}, {counts}"
    assert torch.all(counts[~keep] == 0), f"{what}: drew a column of probability 0"


@pytest.fixture
def step(implementation, monkeypatch):
    monkeypatch.setattr(_extension, "FORCE_REFERENCE", implementation == "reference")
    return electra_fast.generator_step


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_samples_follow_the_tempered_softmax(step, device, temperature):
    logits = torch.tensor(LOGITS, device=device).repeat(DRAWS, 1)
    labels = torch.zeros(DRAWS, dtype=torch.long, device=device)
    samples = step(logits, labels, temperature=temperature, seed=12).samples
    counts = torch.bincount(samples.cpu(), minlength=len(LOGITS))
    want = torch.softmax(torch.tensor(LOGITS, dtype=torch.float64) / temperature, 0)
    assert_distribution(counts, want, f"T={temperature}")


def test_disallowed_label_renormalises_the_rest(step, device):
    logits = torch.tensor(LOGITS, device=device).repeat(DRAWS, 1)
    labels = torch.full((DRAWS,), 3, device=device)  # the most likely column
    samples = step(logits, labels, disallow_labels=True, seed=13).samples
    counts = torch.bincount(samples.cpu(), minlength=len(LOGITS))
    want = torch.softmax(torch.tensor(LOGITS, dtype=torch.float64), 0)
    want[3] = 0
    assert_distribution(counts, want / want.sum(), "disallow_labels")


def test_rows_are_independent(step, device):
    """Pairs of rows: the joint counts of (sample of row 2i, sample of row 2i + 1) factorise."""
    V = 4
    logits = torch.zeros(DRAWS, V, device=device)
    labels = torch.zeros(DRAWS, dtype=torch.long, device=device)
    samples = step(logits, labels, seed=14).samples.cpu().view(-1, 2)
    counts = torch.bincount(samples[:, 0] * V + samples[:, 1], minlength=V * V)
    assert_distribution(counts, torch.full((V * V,), 1.0 / (V * V)), "pairs of rows")
