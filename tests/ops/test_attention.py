"""attention, on the compiled kernels (the CPU twin, CUDA) and on the torch path: against an
fp64 reference (errors at most 2x torch's same-dtype SDPA), padding and packing semantics,
Philox dropout (rate, mask shared by forward and backward, reproducible), opcheck, compile and
bad input. Kernel-only checks are in test_attention_kernel.py."""

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

import electra_fast
from electra_fast import _extension
from electra_fast.ops.attention import attention_reference, dropout_keep_mask, dropout_keep_scale

OP = "attention_forward"
attention_module = importlib.import_module("electra_fast.ops.attention")


@pytest.fixture
def impl(implementation, monkeypatch):
    """Runs the test on the compiled kernel (the CPU twin even without dropout) or the torch
    path."""
    monkeypatch.setattr(_extension, "FORCE_REFERENCE", implementation == "reference")
    monkeypatch.setattr(attention_module, "CPU_KERNEL_WITHOUT_DROPOUT", True)
    return implementation


CASES = [  # (B, L, H, D, lengths or None)
    (1, 1, 1, 32, None),
    (2, 77, 3, 64, [77, 1]),
    (3, 128, 4, 64, [128, 0, 65]),  # an all-padded sequence
    (3, 100, 2, 64, [64, 100, 30]),  # CUDA: keys 64 to 127 of the block, none / some / none
    (1, 300, 2, 128, [299]),
    (2, 33, 2, 32, [10, 33]),
    (2, 70, 1, 16, [70, 3]),  # a head dim the CUDA kernels leave to the torch path
]


def qkv(B, L, H, D, *, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, L, H, D, generator=g).to(dtype).to(device) for _ in range(3)]


def as_lengths(lengths, device):
    return None if lengths is None else torch.tensor(lengths, dtype=torch.int32, device=device)


def exact(q, k, v, lengths, keep=None, p=0.0):
    """fp64 reference output (its gradients come from autograd)."""
    B, L = q.shape[:2]
    full = torch.full((B,), L, device=q.device) if lengths is None else lengths.long()
    return attention_reference(
        q.double(), k.double(), v.double(), full, keep, dropout_keep_scale(p), q.shape[-1] ** -0.5
    )


def loss_and_grads(fn, tensors, grad):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    out.backward(grad.to(out.dtype))
    return [out.detach().double()] + [t.grad.double() for t in leaves]


def assert_within_twice_torch_error(ours, theirs, reference):
    """flash-attention's criterion: each of out, dq, dk, dv is at most twice as far from the
    reference as torch's same-dtype computation (plus a floor for exact cases)."""
    for name, got, baseline, exact in zip(
        "out dq dk dv".split(), ours, theirs, reference, strict=True
    ):
        our_error = (got - exact).abs().max()
        torch_error = (baseline - exact).abs().max()
        assert our_error <= 2 * torch_error + 1e-5, (name, float(our_error), float(torch_error))


def torch_padded_sdpa(q, k, v, lengths):
    """torch's own same-dtype computation: SDPA with a boolean key mask."""
    L = q.shape[1]
    mask = None
    if lengths is not None:
        mask = (torch.arange(L, device=q.device) < lengths.clamp(min=1)[:, None])[:, None, None]
    out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), attn_mask=mask)
    out = out.transpose(1, 2)
    if lengths is not None:
        out = out * (torch.arange(L, device=q.device) < lengths[:, None])[:, :, None, None]
    return out


def check_against_fp64(B, L, H, D, lengths, dtype, device):
    """Output and gradients within twice torch's same-dtype error of the fp64 reference."""
    q, k, v = qkv(B, L, H, D, dtype=dtype, device=device)
    lengths = as_lengths(lengths, device)
    grad = torch.randn(B, L, H, D, device=device)
    want = loss_and_grads(lambda *t: exact(*t, lengths), (q, k, v), grad)
    ours = loss_and_grads(lambda *t: electra_fast.attention(*t, lengths=lengths), (q, k, v), grad)
    theirs = loss_and_grads(lambda *t: torch_padded_sdpa(*t, lengths), (q, k, v), grad)
    assert_within_twice_torch_error(ours, theirs, want)


@pytest.mark.parametrize(("B", "L", "H", "D", "lengths"), CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_fp64_within_twice_torch_error(impl, device, B, L, H, D, lengths, dtype):
    check_against_fp64(B, L, H, D, lengths, dtype, device)


def test_padding_is_ignored_and_padded_rows_are_zero(impl, device):
    q, k, v = qkv(2, 20, 2, 32, device=device)
    lengths = torch.tensor([7, 0], device=device)
    out = electra_fast.attention(q, k, v, lengths=lengths)
    assert torch.all(out[0, 7:] == 0) and torch.all(out[1] == 0)
    k2, v2 = k.clone(), v.clone()
    k2[0, 7:], v2[0, 7:] = 100.0, -100.0  # what lies past the length must not matter
    torch.testing.assert_close(electra_fast.attention(q, k2, v2, lengths=lengths), out)
    alone = electra_fast.attention(q[:1, :7], k[:1, :7], v[:1, :7])
    torch.testing.assert_close(out[:1, :7], alone)


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_packed_equals_padded(impl, device, dropout_p):
    lengths = [5, 0, 12, 9]
    B, L, H, D = len(lengths), 12, 2, 32
    q, k, v = qkv(B, L, H, D, device=device)
    padded_lengths = torch.tensor(lengths, device=device)
    keep = torch.arange(L, device=device) < padded_lengths[:, None]
    packed = [t[keep].requires_grad_() for t in (q, k, v)]
    padded = [t.clone().requires_grad_() for t in (q, k, v)]
    cu = torch.tensor([0, 5, 5, 17, 26], dtype=torch.int32, device=device)
    got = electra_fast.attention(*packed, cu_seqlens=cu, max_seqlen=12, dropout_p=dropout_p, seed=4)
    want = electra_fast.attention(*padded, lengths=padded_lengths, dropout_p=dropout_p, seed=4)
    torch.testing.assert_close(got, want[keep])
    grad = torch.randn_like(got)
    got.backward(grad)
    want[keep].backward(grad)
    for a, b in zip(packed, padded, strict=True):
        torch.testing.assert_close(a.grad, b.grad[keep])


def test_dropout_keeps_one_minus_p_within_binomial_bounds(device):
    B, H, L, p = 4, 3, 128, 0.1
    keep = dropout_keep_mask(torch.tensor(5, device=device), B, H, L, p, device)
    n = keep.numel()
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(int(keep.sum()) - n * (1 - p)) <= 5 * sigma
    # Rows, heads and key groups draw different words: no two rows share a pattern.
    rows = keep.view(-1, L)
    assert torch.unique(rows, dim=0).shape[0] == rows.shape[0]


def test_dropout_forward_and_backward_use_the_mask_from_the_key(device):
    B, L, H, D, p = 2, 24, 2, 32, 0.25
    q, k, v = qkv(B, L, H, D, device=device, dtype=torch.float64)
    lengths = torch.tensor([24, 13], device=device)
    keep = dropout_keep_mask(torch.tensor(9, device=device), B, H, L, p, device)
    grad = torch.randn(B, L, H, D, device=device, dtype=torch.float64)
    got = loss_and_grads(
        lambda *t: electra_fast.attention(*t, lengths=lengths, dropout_p=p, seed=9), (q, k, v), grad
    )
    want = loss_and_grads(lambda *t: exact(*t, lengths, keep, p), (q, k, v), grad)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_dropout_gradcheck():
    q, k, v = (t.requires_grad_() for t in qkv(1, 6, 1, 8, dtype=torch.float64))
    lengths = torch.tensor([5])
    assert torch.autograd.gradcheck(
        lambda *t: electra_fast.attention(*t, lengths=lengths, dropout_p=0.3, seed=2), (q, k, v)
    )


def test_dropout_same_seed_same_output(impl, device):
    q, k, v = qkv(2, 16, 2, 32, device=device)
    first = electra_fast.attention(q, k, v, dropout_p=0.2, seed=1)
    assert torch.equal(first, electra_fast.attention(q, k, v, dropout_p=0.2, seed=1))
    assert not torch.equal(first, electra_fast.attention(q, k, v, dropout_p=0.2, seed=2))
    torch.manual_seed(0)
    drawn = electra_fast.attention(q, k, v, dropout_p=0.2)
    torch.manual_seed(0)
    assert torch.equal(drawn, electra_fast.attention(q, k, v, dropout_p=0.2))


def test_opcheck():
    q, k, v = (t.requires_grad_() for t in qkv(2, 9, 2, 8))
    args = (q, k, v, torch.tensor([9, 4]), torch.tensor(3), 0.2, 0.3)
    torch.library.opcheck(torch.ops.electra_fast_ref.attention_dropout.default, args)


@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
def test_compile_fullgraph(impl, device, dropout_p):
    q, k, v = qkv(2, 16, 2, 32, device=device, dtype=torch.bfloat16)
    lengths = torch.tensor([16, 5], device=device)

    def forward(q, k, v):
        return electra_fast.attention(q, k, v, lengths=lengths, dropout_p=dropout_p, seed=3)

    def run(fn):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = fn(*leaves)
        out.sum().backward()
        return [out] + [t.grad for t in leaves]

    compiled = torch.compile(forward, fullgraph=True, backend="aot_eager")
    for got, want in zip(run(compiled), run(forward), strict=True):
        torch.testing.assert_close(got, want)


def _call(**change):
    q, k, v = qkv(2, 8, 2, 32)
    args = dict(q=q, k=k, v=v)
    args.update(change)
    return args


BAD_CALLS = [
    ("k shape", _call(k=torch.zeros(2, 7, 2, 32)), ValueError, "k must match q"),
    ("v dtype", _call(v=torch.zeros(2, 8, 2, 32, dtype=torch.float16)), ValueError, "v must"),
    ("3-D padded", _call(**{n: torch.zeros(8, 2, 32) for n in "qkv"}), ValueError, "q must have"),
    ("head dim", _call(**{n: torch.zeros(2, 8, 2, 12) for n in "qkv"}), ValueError, "head dim"),
    (
        "int q",
        _call(**{n: torch.zeros(2, 8, 2, 32, dtype=torch.long) for n in "qkv"}),
        TypeError,
        "q must be",
    ),
    ("lengths > L", _call(lengths=torch.tensor([3, 9])), ValueError, "lengths"),
    ("lengths shape", _call(lengths=torch.tensor([3])), ValueError, "lengths"),
    ("float lengths", _call(lengths=torch.tensor([3.0, 2.0])), TypeError, "lengths"),
    ("dropout 1", _call(dropout_p=1.0), ValueError, "dropout_p"),
    ("max_seqlen alone", _call(max_seqlen=8), ValueError, "max_seqlen"),
    (
        "cu not monotone",
        _call(
            **{n: torch.zeros(8, 2, 32) for n in "qkv"},
            cu_seqlens=torch.tensor([0, 5, 3, 8]),
            max_seqlen=5,
        ),
        ValueError,
        "cu_seqlens",
    ),
    (
        "cu wrong total",
        _call(
            **{n: torch.zeros(8, 2, 32) for n in "qkv"},
            cu_seqlens=torch.tensor([0, 5, 7]),
            max_seqlen=5,
        ),
        ValueError,
        "cu_seqlens",
    ),
    (
        "max_seqlen short",
        _call(
            **{n: torch.zeros(8, 2, 32) for n in "qkv"},
            cu_seqlens=torch.tensor([0, 5, 8]),
            max_seqlen=4,
        ),
        ValueError,
        "max_seqlen",
    ),
    (
        "no max_seqlen",
        _call(**{n: torch.zeros(8, 2, 32) for n in "qkv"}, cu_seqlens=torch.tensor([0, 8])),
        ValueError,
        "max_seqlen",
    ),
]


@pytest.mark.parametrize(
    ("arguments", "error", "words"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS]
)
@pytest.mark.parametrize("reference", [False, True])
def test_bad_input_names_the_argument(monkeypatch, reference, arguments, error, words):
    monkeypatch.setattr(_extension, "FORCE_REFERENCE", reference)
    monkeypatch.setattr(attention_module, "CPU_KERNEL_WITHOUT_DROPOUT", True)
    with pytest.raises(error, match=words):
        electra_fast.attention(**arguments)
