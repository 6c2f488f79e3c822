"""The kernels' Gumbel-max computes the exact noise only of the columns that can still win (the
test t > exp(a - bound + margin) of csrc/ops/sampling.h). These tests put the winner where that
test is closest to wrong: a column whose uniform t is tiny (so its score is within t / 2 of the
bound -log(t) the test relies on) scoring exactly as much as a column that the kernels score first.
Without the margin the test drops such a column about half the time, on the rounding of its noise;
with it, the kernels must sample it, as the reference (which scores every column) does."""

import numpy as np
import pytest
import torch

from electra_fast import _extension
from electra_fast.ops.sampling import gumbel_noise_reference
from tests.ops.sampling_cases import raw_step

SEED = 29
# Rows of the sampling stream (seed 29, a 4-column vocabulary, so one Philox element per row)
# whose word at `column` is below 256 (t < 6e-8), found by scanning rows with
# electra_fast.ops._philox; each case checks its own t.
TINY = [(7413418, 0), (12646183, 0), (24133620, 3), (35517583, 0), (36892716, 2)]
V = 4


def score(x: np.float32, inverse_temperature: np.float32, noise: np.float32) -> np.float32:
    """x * (1 / T) + g, each step rounded to float32, as the kernels compute it."""
    return np.float32(np.float32(x * inverse_temperature) + noise)


def tied_logits(noise: np.ndarray, winner: int, level: float, temperature: float) -> np.ndarray:
    """Logits under which `winner` scores the least that still beats every other column: the
    same float as column `rival` (if winner < rival, it wins the tie) or the next one above it;
    the two remaining columns score far below."""
    inverse = np.float32(1.0 / temperature)
    rival = 0 if winner != 0 else 1
    x = np.full(V, np.float32(level - 60.0), dtype=np.float32)
    x[rival] = np.float32(level)
    target = score(x[rival], inverse, noise[rival])
    guess = np.float32((float(target) - float(noise[winner])) / float(inverse))

    def wins(candidate):
        s = score(candidate, inverse, noise[winner])
        return s > target or (s == target and winner < rival)

    # Walk down to a losing x, then up to the first winning one: the least winning score.
    while wins(guess):
        guess = np.nextafter(guess, np.float32(-np.inf))
    while not wins(guess):
        guess = np.nextafter(guess, np.float32(np.inf))
    x[winner] = guess
    return x


@pytest.mark.parametrize(("row", "column"), TINY)
@pytest.mark.parametrize(("level", "temperature"), [(0.0, 1.0), (300.0, 1.0), (5.0, 0.7)])
def test_a_winner_at_the_edge_of_the_skip_test_is_sampled(device, row, column, level, temperature):
    if not _extension.has_kernel("generator_step", device.type):
        pytest.skip(f"no compiled {device.type} kernel")
    seed = torch.tensor(SEED)
    noise = gumbel_noise_reference(seed, torch.tensor([row]), 0, V, V)[0].numpy()
    # g > 16.6 needs -log(1 - t) < 6.2e-8: t is tiny.
    assert noise[column] > 16.6, f"the case's uniform is not tiny: noise {noise[column]}"
    x = tied_logits(noise, column, level, temperature)
    logits = torch.from_numpy(x)[None].to(device)
    labels = torch.tensor([1], device=device)
    for library in ("electra_fast_ref", "electra_fast"):
        samples = raw_step(library, logits, labels, seed=SEED, temperature=temperature,
                           row_offset=row)[1]  # fmt: skip
        assert samples.item() == column, library
