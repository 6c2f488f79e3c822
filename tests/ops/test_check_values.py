"""check_values=False: the ops skip the checks that read values back (on a GPU the host would
wait for the device), and what they then do with a bad value is defined: a non-finite loss for
an out-of-range label, an out-of-range id passed through, never a crash."""

import pytest
import torch

import electra_fast
from electra_fast import _extension
from electra_fast.model.pretraining import draw_keys

SPECIAL = dict(mask_token_id=4, special_token_ids=[0, 1, 2, 3], vocab_size=50)


def head(device="cpu"):
    g = torch.Generator().manual_seed(0)
    hidden, weight, bias = (torch.randn(s, generator=g) for s in ((4, 8), (50, 8), (50,)))
    labels = torch.tensor([1, -100, 10**6, 7])  # row 2 out of range
    return [t.to(device) for t in (hidden, weight, bias, labels)]


def steps(hidden, weight, bias, labels, **kwargs):
    """generator_step on the logits and generator_step_linear on the head, with `kwargs`."""
    logits = torch.addmm(bias, hidden, weight.t())
    return [
        electra_fast.generator_step(logits, labels, **kwargs),
        electra_fast.generator_step_linear(hidden, weight, bias, labels, vocab_tile=16, **kwargs),
    ]


def test_the_references_checked_reject_and_unchecked_give_a_non_finite_loss(monkeypatch):
    monkeypatch.setattr(_extension, "FORCE_REFERENCE", True)
    hidden, weight, bias, labels = head()
    for run in (lambda: steps(hidden, weight, bias, labels)[0],
                lambda: steps(hidden, weight, bias, labels)[1]):  # fmt: skip
        with pytest.raises(ValueError, match=r"labels must be in \[0, vocab_size=50\)"):
            run()
    for out in steps(hidden, weight, bias, labels, check_values=False):
        finite = torch.isfinite(out.loss)
        assert finite.tolist() == [True, True, False, True]
        assert out.loss[1] == 0  # ignored
    ids = torch.tensor([[2, 5, 7, 999, 3] + [6] * 15])
    with pytest.raises(ValueError, match="input_ids must be in"):
        electra_fast.mask_tokens(ids, torch.ones_like(ids), **SPECIAL)
    out = electra_fast.mask_tokens(ids, torch.ones_like(ids), **SPECIAL, check_values=False)
    chosen = out.positions[out.weights > 0].tolist()
    value = int(out.masked_ids[0, 3])  # passed through, or masked like any other id
    assert value == 999 or (value == SPECIAL["mask_token_id"] and 3 in chosen), value


@pytest.mark.skipif(not _extension.has_kernel("generator_step", "cpu"), reason="no CPU kernel")
def test_the_cpu_kernels_reject_bad_values_whatever_check_values_says():
    hidden, weight, bias, labels = head()
    with pytest.raises(ValueError, match="labels must be in"):
        steps(hidden, weight, bias, labels, check_values=False)
    ids = torch.tensor([[2, 5, 999, 3] + [6] * 16])
    with pytest.raises(ValueError, match="input_ids must be in"):
        electra_fast.mask_tokens(ids, torch.ones_like(ids), **SPECIAL, check_values=False)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("reference", [False, True], ids=["kernel", "reference"])
def test_unchecked_ops_never_make_the_host_wait(monkeypatch, reference):
    monkeypatch.setattr(_extension, "FORCE_REFERENCE", reference)
    hidden, weight, bias, labels = head("cuda")
    labels[2] = 9
    ids = torch.randint(5, 50, (8, 64), device="cuda")
    mask_key, step_key = draw_keys("cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        electra_fast.mask_tokens(ids, torch.ones_like(ids), **SPECIAL, seed=mask_key,
                                 check_values=False)  # fmt: skip
        steps(hidden, weight, bias, labels, seed=step_key, check_values=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.set_sync_debug_mode("error")
    try:  # the test can fail: checked, the same calls wait
        with pytest.raises(RuntimeError, match="synchroniz"):
            electra_fast.mask_tokens(ids, torch.ones_like(ids), **SPECIAL, seed=mask_key)
    finally:
        torch.cuda.set_sync_debug_mode("default")
