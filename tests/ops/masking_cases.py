"""Inputs and an independent oracle for the masking tests."""

from __future__ import annotations

import numpy as np
import torch

from electra_fast.ops.masking import mask_tokens_reference

PAD, CLS, SEP, MASK = 0, 1, 2, 3
SPECIALS = [PAD, CLS, SEP]


def sample_inputs(
    batch: int,
    length: int,
    vocab: int = 1000,
    *,
    device="cpu",
    dtype=torch.int64,
    generator: torch.Generator | None = None,
):
    """[CLS] tokens [SEP] rows with padding of random length, some fully padded rows, a row of
    only specials, and stray [MASK] and [SEP] ids inside the text."""
    g = generator or torch.Generator().manual_seed(batch * 1000 + length)
    ids = torch.randint(4, vocab, (batch, length), generator=g)
    lengths = torch.randint(0, length + 1, (batch,), generator=g)
    if batch > 2:
        lengths[1] = 0  # nothing but padding
        lengths[2] = length
        ids[2] = SEP  # only specials
    attention = (torch.arange(length) < lengths[:, None]).long()
    ids[:, 0] = torch.where(lengths > 0, CLS, ids[:, 0])
    stray = torch.rand(batch, length, generator=g) < 0.02
    ids[stray] = MASK
    ids[attention == 0] = PAD
    return ids.to(device=device, dtype=dtype), attention.to(device=device, dtype=dtype)


def run(
    implementation: str,
    input_ids,
    attention_mask,
    *,
    seed: int,
    special_ids=SPECIALS,
    mask_token_id=MASK,
    vocab_size=1000,
    mask_prob=0.15,
    max_predictions=None,
    replace_prob=0.85,
    random_prob=0.0,
    bernoulli=False,
    row_offset=0,
):
    """The op or its reference, called with exactly the same arguments."""
    if max_predictions is None:
        max_predictions = max(1, int((mask_prob + 0.005) * input_ids.shape[1]))
    key = torch.tensor(seed, dtype=torch.int64, device=input_ids.device)
    args = (
        input_ids,
        attention_mask,
        key,
        special_ids,
        mask_token_id,
        vocab_size,
        mask_prob,
        max_predictions,
        replace_prob,
        random_prob,
        bernoulli,
        row_offset,
    )
    if implementation == "kernel":
        return torch.ops.electra_fast.mask_tokens.default(*args)
    return mask_tokens_reference(*args)


def expected_count(num_tokens: int, num_candidates: int, mask_prob: float, slots: int) -> int:
    """ELECTRA's count, computed here with numpy: float32 product, round half to even."""
    rounded = int(np.rint(np.float32(num_tokens) * np.float32(mask_prob)))
    return min(num_candidates, max(1, min(slots, rounded)))


def check_semantics(
    input_ids,
    attention_mask,
    outputs,
    *,
    specials,
    mask_token_id,
    vocab_size,
    counts=None,
    random_prob=0.0,
):
    """Asserts every structural property of a masking result, row by row; `counts` (one per
    row) is the exact number of chosen positions expected, when known."""
    masked, positions, labels, weights = (t.cpu() for t in outputs)
    ids, attention = input_ids.cpu().long(), attention_mask.cpu()
    special_set = set(specials) | {mask_token_id}
    assert masked.dtype == input_ids.dtype and positions.dtype == torch.int64
    assert labels.dtype == torch.int64 and weights.dtype == torch.float32
    for b in range(ids.shape[0]):
        k = int(weights[b].sum())
        if counts is not None:
            assert k == counts[b], f"row {b}: {k} chosen, expected {counts[b]}"
        assert torch.equal(weights[b], (torch.arange(weights.shape[1]) < k).float())
        chosen = positions[b, :k].tolist()
        assert chosen == sorted(set(chosen)), f"row {b}: positions not distinct and ascending"
        assert positions[b, k:].eq(0).all() and labels[b, k:].eq(0).all()
        for pos in chosen:
            assert attention[b, pos] != 0, f"row {b}: padding position {pos} chosen"
            assert int(ids[b, pos]) not in special_set, f"row {b}: special at {pos} chosen"
        assert labels[b, :k].tolist() == ids[b, chosen].tolist()
        unchosen = torch.ones(ids.shape[1], dtype=torch.bool)
        unchosen[chosen] = False
        assert torch.equal(masked[b][unchosen].long(), ids[b][unchosen])
        for pos in chosen:
            new = int(masked[b, pos])
            if new not in (mask_token_id, int(ids[b, pos])):
                assert random_prob > 0, f"row {b}: position {pos} became {new}"
                assert 0 <= new < vocab_size and new not in special_set
