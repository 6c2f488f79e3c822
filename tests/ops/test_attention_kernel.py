"""The compiled attention kernels (the CPU twin, and CUDA where there is one) beyond the shared
semantics of test_attention.py: the saved log-sum-exp, opcheck of both ops, inputs laid out as
the fused projection makes them, and dropout in low precision against torch's same-dtype
computation given the same mask."""

import pytest
import torch

import electra_fast
from electra_fast import _extension
from electra_fast.ops.attention import (
    attention_reference,
    attention_reference_backward,
    dropout_keep_mask,
    dropout_keep_scale,
)
from tests.ops.test_attention import (
    assert_within_twice_torch_error,
    attention_module,
    loss_and_grads,
    qkv,
)

OP = "attention_forward"


@pytest.fixture
def kernel(device, monkeypatch):
    """The kernel of `device` for every call, even without dropout on the CPU."""
    if not _extension.has_kernel(OP, device.type):
        pytest.skip(f"no compiled {device.type} kernel in this build")
    monkeypatch.setattr(_extension, "FORCE_REFERENCE", False)
    monkeypatch.setattr(attention_module, "CPU_KERNEL_WITHOUT_DROPOUT", True)
    return torch.ops.electra_fast


def kernel_dtype(device):
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@pytest.mark.parametrize("packed", [False, True])
def test_lse_is_the_logsumexp_of_the_scaled_scores(kernel, device, packed):
    B, L, H, D, lengths = 3, 130, 2, 64, [130, 0, 67]
    q, k, v = qkv(B, L, H, D, dtype=kernel_dtype(device), device=device)
    scale = 0.3
    scores = torch.einsum("bihd,bjhd->bhij", q.double(), k.double()) * scale
    keys = torch.arange(L, device=device) < torch.tensor(lengths, device=device)[:, None]
    want = scores.masked_fill(~keys[:, None, None, :], -torch.inf).logsumexp(-1)
    want = want.transpose(1, 2)  # [B, L, H]
    seed = torch.zeros((), dtype=torch.int64, device=device)
    if packed:
        real = keys.flatten()
        cu = torch.tensor([0, 130, 130, 197], dtype=torch.int32, device=device)
        flat = [t.flatten(0, 1)[real] for t in (q, k, v)]
        _, lse = kernel.attention_forward(*flat, None, cu, L, seed, 0.0, scale)
        torch.testing.assert_close(lse.double(), want.flatten(0, 1)[real], rtol=1e-5, atol=1e-5)
        return
    lengths32 = torch.tensor(lengths, dtype=torch.int32, device=device)
    _, lse = kernel.attention_forward(q, k, v, lengths32, None, L, seed, 0.0, scale)
    torch.testing.assert_close(lse[keys].double(), want[keys], rtol=1e-5, atol=1e-5)
    assert torch.all(lse[~keys] == torch.inf)  # padded rows: P = exp(s - lse) = 0 in backward


@pytest.mark.parametrize("packed", [False, True])
def test_opcheck(kernel, device, packed):
    q, k, v = (
        t.requires_grad_() for t in qkv(2, 9, 2, 32, dtype=kernel_dtype(device), device=device)
    )
    seed = torch.tensor(3, device=device)
    if packed:
        q, k, v = (t.detach()[:, :4].flatten(0, 1).requires_grad_() for t in (q, k, v))
        cu = torch.tensor([0, 3, 8], dtype=torch.int32, device=device)
        layout = (None, cu, 5)
    else:
        layout = (torch.tensor([9, 4], dtype=torch.int32, device=device), None, 9)
    args = (q, k, v, *layout, seed, 0.2, 0.3)
    torch.library.opcheck(kernel.attention_forward.default, args)
    out, lse = kernel.attention_forward(*args)
    grad = torch.randn_like(out)
    backward_args = (grad, q.detach(), k.detach(), v.detach(), out.detach(), lse, *layout)
    torch.library.opcheck(kernel.attention_backward.default, backward_args + (seed, 0.2, 0.3))


def test_fused_projection_and_misaligned_layouts_read_like_contiguous(kernel, device):
    B, L, H, D = 2, 70, 3, 32
    dtype = kernel_dtype(device)
    g = torch.Generator().manual_seed(1)
    fused = torch.randn(B, L, 3, H, D, generator=g).to(dtype).to(device)
    # Rows 3 * H * D apart, as the encoder's qkv projection leaves them; and rows 4 elements
    # longer than H * D, a stride the kernels cannot read directly (they copy).
    strided = list(fused.unbind(2))
    wide = torch.randn(B * L * (H * D + 4), generator=g).to(dtype).to(device)
    misaligned = wide.as_strided((B, L, H, D), (L * (H * D + 4), H * D + 4, D, 1))
    strided[1] = misaligned
    lengths = torch.tensor([70, 41], device=device)
    grad = torch.randn(B, L, H, D, generator=g).to(device)

    def call(q, k, v):
        return electra_fast.attention(q, k, v, lengths=lengths, dropout_p=0.1, seed=5)

    got = loss_and_grads(call, strided, grad)
    want = loss_and_grads(call, [t.contiguous() for t in strided], grad)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_the_backward_takes_grad_out_and_out_in_any_layout(kernel, device):
    """dO and O non-contiguous, a 2-byte element off a 16-byte boundary or in another dtype give
    the gradients of contiguous ones (the kernels take copies of those, and only of those), and
    those are the fp64 reference's given the same inputs."""
    B, L, H, D, scale = 2, 70, 2, 32, 0.3
    dtype = kernel_dtype(device)
    q, k, v = qkv(B, L, H, D, dtype=dtype, device=device, seed=4)
    lengths = torch.tensor([70, 23], dtype=torch.int32, device=device)
    seed = torch.tensor(6, device=device)
    out, lse = kernel.attention_forward(q, k, v, lengths, None, L, seed, 0.1, scale)
    grad = torch.randn(B, L, H, D, generator=torch.Generator().manual_seed(5)).to(device, dtype)

    def backward(grad_out, out_given):
        return kernel.attention_backward(
            grad_out, q, k, v, out_given, lse, lengths, None, L, seed, 0.1, scale
        )

    want = backward(grad, out)
    keep = dropout_keep_mask(seed, B, H, L, 0.1, device)
    exact = [t.double() for t in (grad, q, k, v)]
    reference = attention_reference_backward(
        *exact, lengths.long(), keep, dropout_keep_scale(0.1), scale
    )
    for got, oracle in zip(want, reference, strict=True):
        # bfloat16 on CUDA: the kernels round P and dS to it as torch's bf16 matmuls would
        tolerance = 1e-4 if dtype == torch.float32 else 5e-2
        torch.testing.assert_close(got.double(), oracle, rtol=tolerance, atol=tolerance)
    for grad_out, out_given in [
        (transposed(grad), transposed(out)),
        (misaligned(grad), out),
        (grad, misaligned(out)),
        (grad.double(), out),
    ]:
        for got, expected in zip(backward(grad_out, out_given), want, strict=True):
            torch.testing.assert_close(got, expected)  # dq: atomics add in any order on CUDA


def transposed(t):
    """`t`'s values in a non-contiguous layout (its first two dimensions swapped in memory)."""
    return t.transpose(0, 1).contiguous().transpose(0, 1)


def misaligned(t):
    """`t`'s values, contiguous, one element past a 16-byte boundary."""
    copy = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:].view_as(t).copy_(t)
    assert copy.data_ptr() % 16 != 0
    return copy


def torch_same_dtype(q, k, v, lengths, keep, keep_scale):
    """torch's own computation in q's dtype, given the keep mask: scores, masked softmax, dropout
    and the product with v, each rounded to the dtype as torch rounds it."""
    L = q.shape[1]
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * q.shape[-1] ** -0.5
    keys = torch.arange(L, device=q.device) < lengths.clamp(min=1)[:, None]
    probabilities = scores.masked_fill(~keys[:, None, None, :], -torch.inf).softmax(-1)
    dropped = probabilities * keep.to(q.dtype) * keep_scale
    out = torch.einsum("bhij,bjhd->bihd", dropped, v)
    return out * (torch.arange(L, device=q.device) < lengths[:, None])[:, :, None, None]


def check_dropout_given_the_mask(L, lengths, dtype, device):
    """With dropout, output and gradients within twice the error of torch's same-dtype
    computation given the same keep mask, against the fp64 reference given it."""
    B, H, D, p = len(lengths), 2, 64, 0.25
    q, k, v = qkv(B, L, H, D, dtype=dtype, device=device, seed=3)
    lengths = torch.tensor(lengths, device=device)
    keep = dropout_keep_mask(torch.tensor(9, device=device), B, H, L, p, device)
    keep_scale = dropout_keep_scale(p)
    grad = torch.randn(B, L, H, D, device=device)
    exact = [t.double() for t in (q, k, v)]
    want = loss_and_grads(
        lambda *t: attention_reference(*t, lengths, keep, keep_scale, D**-0.5), exact, grad
    )
    ours = loss_and_grads(
        lambda *t: electra_fast.attention(*t, lengths=lengths, dropout_p=p, seed=9), (q, k, v), grad
    )
    theirs = loss_and_grads(
        lambda *t: torch_same_dtype(*t, lengths, keep, keep_scale), (q, k, v), grad
    )
    assert_within_twice_torch_error(ours, theirs, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dropout_within_twice_torch_error_given_the_mask(kernel, device, dtype):
    if device.type == "cuda" and dtype == torch.float32:
        pytest.skip("float32 takes the torch path on CUDA")
    check_dropout_given_the_mask(150, [150, 70], dtype, device)  # 3 key tiles, the last partial


def test_a_call_without_dropout_draws_nothing(kernel, device):
    q, k, v = qkv(1, 8, 1, 32, dtype=kernel_dtype(device), device=device)
    generator = torch.Generator(device).manual_seed(0)
    state = generator.get_state()
    electra_fast.attention(q, k, v, generator=generator)
    assert torch.equal(generator.get_state(), state)


def test_the_op_takes_a_seed_only_with_dropout(kernel, device):
    q, k, v = qkv(2, 9, 2, 32, dtype=kernel_dtype(device), device=device)
    want = electra_fast.attention(q, k, v)
    out, _ = kernel.attention_forward(q, k, v, None, None, 9, None, 0.0, 32**-0.5)
    torch.testing.assert_close(out, want)
    torch.library.opcheck(
        kernel.attention_forward.default, (q, k, v, None, None, 9, None, 0.0, 0.3)
    )
    with pytest.raises(ValueError, match="seed .* is required with dropout_p=0.1"):
        kernel.attention_forward(q, k, v, None, None, 9, None, 0.1, 0.3)


def test_dq_is_the_same_on_every_run_and_zero_past_the_lengths(kernel, device):
    """Up to 128 keys the CUDA backward's blocks hold every key of their sequence and write dq
    themselves, in two halves of 64 keys, without atomics: the same bits on every run, and
    zeros in every padded row, even in memory that held NaN (the CPU twin sums in a fixed order
    too). Sequences end in either half, exactly at its end, or are empty."""
    B, L, H, D = 6, 128, 4, 64
    dtype = kernel_dtype(device)
    q, k, v = qkv(B, L, H, D, dtype=dtype, device=device, seed=3)
    lengths = torch.tensor([128, 100, 64, 33, 1, 0], device=device)
    grad = torch.randn(B, L, H, D, device=device).to(dtype)
    padded = torch.arange(L, device=device) >= lengths[:, None]

    def grads():
        # Freed at once: the allocator hands its NaN-filled memory to the gradients below.
        torch.full((4 * B * L * H * D,), float("nan"), dtype=dtype, device=device)
        inputs = [t.detach().requires_grad_() for t in (q, k, v)]
        electra_fast.attention(*inputs, lengths=lengths, dropout_p=0.1, seed=5).backward(grad)
        return [t.grad for t in inputs]

    first = grads()
    for name, g in zip(["dq", "dk", "dv"], first, strict=True):
        assert torch.all(g[padded] == 0), name
        assert torch.isfinite(g).all(), name
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(first, grads(), strict=True))
