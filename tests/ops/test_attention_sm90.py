"""The wgmma attention kernels (H100/H200, ELECTRA_FAST_WGMMA=1) beside the sm80 ones: output
and gradients against the fp64 reference within twice torch's error, the lse, padding and
packing, and dropout with the sm80 kernels' mask. Shapes cross their tiles: the forward takes
128 queries per block (64 per warpgroup, one of them idle when a sequence ends early) against
tiles of 128 keys; the backward 128 keys per block (64 per warpgroup) against tiles of 64
queries; the last tiles partial. The backward has two ways of summing dQ, both covered: atomics
into an fp32 sum when a sequence may span blocks (L > 128), the block's own writes when none can
(L <= 128)."""

import pytest
import torch

import electra_fast
from electra_fast import _extension
from tests.ops import hopper
from tests.ops.test_attention import check_against_fp64, qkv
from tests.ops.test_attention_kernel import check_dropout_given_the_mask

pytestmark = hopper.MARKS
DEVICE = torch.device("cuda")


@pytest.fixture(autouse=True)
def wgmma(monkeypatch):
    monkeypatch.setattr(_extension, "FORCE_REFERENCE", False)
    monkeypatch.setenv("ELECTRA_FAST_WGMMA", "1")


def sm80(monkeypatch, fn):
    """fn() run on the sm80 kernels instead: the switch is read on every call, so that a bad
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
    (3, 96, 2, 128, [96, 65, 20]),  # dQ written by the blocks, in two parts of 64 columns
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


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("L", [300, 128])
def test_agrees_with_the_sm80_kernels_with_dropout(monkeypatch, D, L):
    """The dropout decisions depend on positions only, so both kernels drop the same
    probabilities: outputs and gradients differ by rounding alone."""
    B, H = 3, 4
    q, k, v = qkv(B, L, H, D, dtype=torch.bfloat16, device=DEVICE, seed=2)
    lengths = torch.tensor([L, 100, 33], device=DEVICE)
    grad = torch.randn(B, L, H, D, device=DEVICE).to(torch.bfloat16)

    def call():
        inputs = [t.detach().requires_grad_() for t in (q, k, v)]
        out = electra_fast.attention(*inputs, lengths=lengths, dropout_p=0.2, seed=11)
        out.backward(grad)
        return [out.detach()] + [t.grad for t in inputs]

    ours, theirs = call(), sm80(monkeypatch, call)
    for name, a, b in zip(["out", "dq", "dk", "dv"], ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2, msg=lambda m, n=name: f"{n}: {m}")
    padded = torch.arange(L, device=DEVICE) >= lengths[:, None]
    assert all(torch.all(t[padded] == 0) for t in ours)


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
    packed_in = [t[keep].requires_grad_() for t in (q, k, v)]
    padded_in = [t.clone().requires_grad_() for t in (q, k, v)]
    packed = electra_fast.attention(*packed_in, cu_seqlens=cu, max_seqlen=L)
    padded = electra_fast.attention(*padded_in, lengths=padded_lengths)
    torch.testing.assert_close(packed, padded[keep])
    assert torch.all(padded[~keep] == 0)
    grad = torch.randn_like(packed)
    packed.backward(grad)
    padded[keep].backward(grad)
    for a, b in zip(packed_in, padded_in, strict=True):
        # dq is summed with atomics in no fixed order: equal up to the last bits.
        torch.testing.assert_close(a.grad, b.grad[keep], rtol=1e-2, atol=1e-3)
        assert torch.all(b.grad[~keep] == 0)
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


def test_dq_written_by_the_blocks_is_the_same_on_every_run():
    """With every sequence within one block's keys, no atomics order dQ's sums."""
    B, L, H, D = 4, 128, 4, 64
    q, k, v = qkv(B, L, H, D, dtype=torch.bfloat16, device=DEVICE, seed=3)
    lengths = torch.tensor([128, 100, 64, 1], device=DEVICE)
    grad = torch.randn(B, L, H, D, device=DEVICE).to(torch.bfloat16)

    def grads():
        inputs = [t.detach().requires_grad_() for t in (q, k, v)]
        electra_fast.attention(*inputs, lengths=lengths, dropout_p=0.1, seed=5).backward(grad)
        return [t.grad for t in inputs]

    first = grads()
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(first, grads(), strict=True))


@pytest.mark.parametrize("layout", ["padded", "packed"])
@pytest.mark.parametrize("D", [64, 128])
def test_fused_projection_gradient_agrees_with_the_sm80_kernels(monkeypatch, layout, D):
    """attention_qkvpacked's backward writes dq, dk and dv as views of one tensor (rows 3 * H * D
    apart), here with dQ written by the blocks."""
    lengths = [128, 70, 0, 33]
    B, L, H = len(lengths), 128, 2
    fused = torch.stack(qkv(B, L, H, D, dtype=torch.bfloat16, device=DEVICE, seed=4), dim=2)
    length_tensor = torch.tensor(lengths, device=DEVICE)
    real = torch.arange(L, device=DEVICE) < length_tensor[:, None]
    if layout == "padded":
        arguments = {"lengths": length_tensor}
    else:
        fused = fused[real]
        cu = torch.tensor([0, 128, 198, 198, 231], dtype=torch.int32, device=DEVICE)
        arguments = {"cu_seqlens": cu, "max_seqlen": L}
    grad = torch.randn(fused.select(-3, 0).shape, device=DEVICE).to(torch.bfloat16)

    def dqkv():
        leaf = fused.detach().requires_grad_()
        electra_fast.attention_qkvpacked(leaf, **arguments).backward(grad)
        return leaf.grad

    ours, theirs = dqkv(), sm80(monkeypatch, dqkv)
    torch.testing.assert_close(ours, theirs, rtol=2e-2, atol=2e-2)
    if layout == "padded":
        assert torch.all(ours[~real] == 0)
