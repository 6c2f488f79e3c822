"""The wgmma attention forward (H100/H200, ELECTRA_FAST_WGMMA=1) beside the sm80 one: against
the fp64 reference within twice torch's error, its lse, padding and packing, and dropout with
the sm80 kernel's mask. Shapes cross its tiles: 128 queries per block (64 per warpgroup, one
of them idle when a sequence ends early) and 128 keys per tile, the last one partial."""

import pytest
import torch

import electra_fast
from electra_fast import _extension
from tests.ops.test_attention import check_against_fp64, qkv
from tests.ops.test_attention_kernel import check_dropout_given_the_mask

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not HOPPER, reason="needs an H100/H200 (compute capability 9.0)"),
    pytest.mark.skipif(
        not _extension.sm90a_kernels_built(), reason="this build has no sm_90a kernels"
    ),
]
DEVICE = torch.device("cuda")


@pytest.fixture(autouse=True)
def wgmma(monkeypatch):
    monkeypatch.setattr(_extension, "FORCE_REFERENCE", False)
    monkeypatch.setenv("ELECTRA_FAST_WGMMA", "1")


def sm80(monkeypatch, fn):
    """fn() run on the sm80 forward instead: the switch is read on every call, so that a bad
    wgmma result can be set aside without a rebuild."""
    monkeypatch.setenv("ELECTRA_FAST_WGMMA", "0")
    try:
        return fn()
    finally:
        monkeypatch.setenv("ELECTRA_FAST_WGMMA", "1")


CASES = [  # (B, L, H, D, lengths or None)
    (2, 128, 4, 64, None),
    (3, 128, 4, 64, [128, 40, 0]),  # the second warpgroup idle; an empty sequence
    (2, 77, 3, 64, [77, 1]),
    (2, 300, 2, 64, [300, 129]),  # three key tiles, one key into the second
    (1, 512, 12, 64, [400]),
    (2, 200, 2, 128, [200, 65]),
]


@pytest.mark.parametrize(("B", "L", "H", "D", "lengths"), CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_matches_fp64_within_twice_torch_error(B, L, H, D, lengths, dtype):
    check_against_fp64(B, L, H, D, lengths, dtype, DEVICE)


@pytest.mark.parametrize("D", [64, 128])
def test_lse_is_the_logsumexp_of_the_scaled_scores(D):
    B, L, H, lengths, scale = 3, 260, 2, [260, 0, 67], 0.3
    q, k, v = qkv(B, L, H, D, dtype=torch.bfloat16, device=DEVICE)
    scores = torch.einsum("bihd,bjhd->bhij", q.double(), k.double()) * scale
    keys = torch.arange(L, device=DEVICE) < torch.tensor(lengths, device=DEVICE)[:, None]
    want = scores.masked_fill(~keys[:, None, None, :], -torch.inf).logsumexp(-1).transpose(1, 2)
    lengths32 = torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
    seed = torch.zeros((), dtype=torch.int64, device=DEVICE)
    _, lse = torch.ops.electra_fast.attention_forward(q, k, v, lengths32, None, L, seed, 0.0, scale)
    torch.testing.assert_close(lse[keys].double(), want[keys], rtol=1e-5, atol=1e-5)
    assert torch.all(lse[~keys] == torch.inf)


def test_agrees_with_the_sm80_forward_with_dropout(monkeypatch):
    """The dropout decisions depend on positions only, so both kernels drop the same
    probabilities: their outputs differ by rounding alone."""
    B, L, H, D = 3, 300, 4, 64
    q, k, v = qkv(B, L, H, D, dtype=torch.bfloat16, device=DEVICE, seed=2)
    lengths = torch.tensor([300, 130, 33], device=DEVICE)

    def call():
        return electra_fast.attention(q, k, v, lengths=lengths, dropout_p=0.2, seed=11)

    ours, theirs = call(), sm80(monkeypatch, call)
    torch.testing.assert_close(ours, theirs, rtol=2e-2, atol=2e-2)
    padded = torch.arange(L, device=DEVICE) >= lengths[:, None]
    assert torch.all(ours[padded] == 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dropout_within_twice_torch_error_given_the_mask(dtype):
    check_dropout_given_the_mask(300, [300, 140], dtype, DEVICE)


def test_packed_equals_padded_and_padding_is_ignored():
    lengths = [130, 0, 64, 257]
    B, L, H, D = len(lengths), 257, 2, 64
    q, k, v = qkv(B, L, H, D, dtype=torch.bfloat16, device=DEVICE)
    padded_lengths = torch.tensor(lengths, device=DEVICE)
    keep = torch.arange(L, device=DEVICE) < padded_lengths[:, None]
    cu = torch.tensor([0, 130, 130, 194, 451], dtype=torch.int32, device=DEVICE)
    packed = electra_fast.attention(*(t[keep] for t in (q, k, v)), cu_seqlens=cu, max_seqlen=L)
    padded = electra_fast.attention(q, k, v, lengths=padded_lengths)
    torch.testing.assert_close(packed, padded[keep])
    assert torch.all(padded[~keep] == 0)
    k2, v2 = k.clone(), v.clone()
    k2[~keep], v2[~keep] = 100.0, -100.0  # what lies past the lengths must not matter
    assert torch.equal(electra_fast.attention(q, k2, v2, lengths=padded_lengths), padded)


def test_the_fused_projection_layout_reads_like_contiguous():
    B, L, H, D = 2, 140, 4, 64
    fused = torch.randn(B, L, 3, H, D, device=DEVICE).to(torch.bfloat16)
    q, k, v = fused.unbind(2)  # rows 3 * H * D apart
    lengths = torch.tensor([140, 90], device=DEVICE)
    got = electra_fast.attention(q, k, v, lengths=lengths)
    want = electra_fast.attention(*(t.contiguous() for t in (q, k, v)), lengths=lengths)
    assert torch.equal(got, want)
