"""build_discriminator_inputs against a loop over the slots, as ELECTRA's _get_fake_data does."""

import pytest
import torch

import electra_fast


def loop_oracle(input_ids, positions, weights, samples):
    ids = input_ids.clone()
    samples = samples.view(positions.shape)
    for b in range(positions.shape[0]):
        for s in range(positions.shape[1]):
            if weights[b, s] != 0:
                ids[b, positions[b, s]] = samples[b, s]
    return ids, (ids != input_ids).float()


def masked_batch(device, B=6, L=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 50, (B, L), generator=g)
    attention = (torch.arange(L) < torch.randint(1, L + 1, (B, 1), generator=g)).long()
    ids, attention = ids.to(device), attention.to(device)
    masked = electra_fast.mask_tokens(
        ids, attention, mask_token_id=4, special_token_ids=[0], vocab_size=50, seed=seed
    )
    return ids, masked


def test_matches_the_loop(device):
    ids, masked = masked_batch(device)
    # Samples drawn from few values, so that many equal the original token.
    samples = torch.randint(5, 9, masked.positions.shape, device=device).flatten()
    samples[::3] = masked.labels.flatten()[::3]
    got = electra_fast.build_discriminator_inputs(ids, masked.positions, masked.weights, samples)
    want = loop_oracle(ids, masked.positions, masked.weights, samples)
    assert torch.equal(got.input_ids, want[0]) and torch.equal(got.labels, want[1])
    assert got.labels.dtype == torch.float32
    used = masked.weights != 0
    same = samples.view(used.shape) == masked.labels
    assert int(got.labels.sum()) == int((used & ~same).sum())  # equal samples count as real


def test_unused_slots_never_overwrite_position_zero(device):
    """Unused slots point at position 0; a used slot at position 0 must still win."""
    ids = torch.tensor([[7, 8, 9, 10]], device=device)
    positions = torch.tensor([[0, 2, 0, 0]], device=device)
    weights = torch.tensor([[1.0, 1.0, 0.0, 0.0]], device=device)
    samples = torch.tensor([20, 9, 30, 31], device=device)
    out = electra_fast.build_discriminator_inputs(ids, positions, weights, samples)
    assert out.input_ids.tolist() == [[20, 8, 9, 10]]
    assert out.labels.tolist() == [[1.0, 0.0, 0.0, 0.0]]


def test_keeps_the_ids_dtype(device):
    ids, masked = masked_batch(device)
    ids32 = ids.int()
    samples = masked.labels.flatten() + 1
    out = electra_fast.build_discriminator_inputs(ids32, masked.positions, masked.weights, samples)
    assert out.input_ids.dtype == torch.int32


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (dict(input_ids=torch.zeros(8, dtype=torch.long)), "input_ids"),
        (dict(positions=torch.zeros(3, 2, dtype=torch.long)), "positions"),
        (dict(weights=torch.ones(2, 3)), "weights"),
        (dict(samples=torch.zeros(5, dtype=torch.long)), "samples"),
    ],
)
def test_bad_input_names_the_argument(change, words):
    args = dict(
        input_ids=torch.zeros(2, 8, dtype=torch.long),
        positions=torch.zeros(2, 2, dtype=torch.long),
        weights=torch.ones(2, 2),
        samples=torch.zeros(4, dtype=torch.long),
    )
    args.update(change)
    with pytest.raises(ValueError, match=words):
        electra_fast.build_discriminator_inputs(**args)
