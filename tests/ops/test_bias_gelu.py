"""bias_gelu on the compiled kernels (CPU, CUDA) and on the torch reference: output and both
gradients against torch's gelu of x + bias in float64; the error of half-precision outputs at
most about that of torch's own same-dtype linear-with-bias + gelu; a bias gradient that does not
depend on the thread count; opcheck, compile and bad input."""

import re

import pytest
import torch
import torch.nn.functional as F

from electra_fast import _extension, bias_gelu
from tests.ops.views import misaligned

OP = "bias_gelu"


@pytest.fixture
def impl(implementation, monkeypatch):
    monkeypatch.setattr(_extension, "FORCE_REFERENCE", implementation == "reference")
    return implementation


def inputs(shape, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 2).to(dtype)
    bias = torch.randn(shape[-1], generator=g)
    return x.to(device), bias.to(device)


def oracle(x, bias, approximate):
    return F.gelu(x.double() + bias.double(), approximate=approximate)


def run(fn, tensors, grad):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    out.backward(grad.to(out.dtype))
    return out, [t.grad for t in leaves]


SHAPES = [(1, 8), (3, 5, 64), (2, 77, 256), (70, 1024), (6, 40), (2, 255), (3, 3, 7), (0, 16)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_equals_gelu_of_the_sum(impl, device, shape, dtype, approximate):
    """float32: output and gradients to about 1e-5 of float64. Half precision: the output and
    x's gradient are rounded once to the dtype, so their error is within one rounding (2^-8
    relative for bfloat16) of float64; the bias gradient is a sum of fp32 terms."""
    x, bias = inputs(shape, dtype, device)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)

    def ours(x, bias):
        return bias_gelu(x, bias, approximate=approximate)

    out, (gx, gb) = run(ours, (x, bias), grad)
    want, (wx, wb) = run(lambda x, b: oracle(x, b, approximate), (x, bias), grad.to(dtype))
    assert out.dtype == dtype and gx.dtype == dtype and gb.dtype == torch.float32
    eps = {torch.float32: 1e-6, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}[dtype]
    for name, got, wanted in (("out", out, want), ("x", gx, wx)):
        bound = 2 * eps * wanted.abs() + 1e-5
        error = (got.double() - wanted).abs()
        assert (error <= bound).all(), (name, (error - bound).max().item())
    scale = max(1.0, wb.abs().max().item()) if wb.numel() else 1.0
    torch.testing.assert_close(gb.double(), wb.double(), rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_error_is_at_most_torchs(impl, device, dtype):
    """Against float64, our bias_gelu of x = h W^T (rounded to the dtype without the bias) is at
    least as exact as torch's gelu of the same-dtype linear output with the bias in it, up to
    a 2x margin: the criterion of the other ops' half-precision tests."""
    g = torch.Generator().manual_seed(3)
    h = torch.randn(256, 96, generator=g).to(device)
    w = (torch.randn(512, 96, generator=g) / 10).to(device)
    b = torch.randn(512, generator=g).to(device)
    exact = F.gelu(h.double() @ w.double().T + b.double())
    with torch.autocast(device.type, dtype=dtype):
        ours = bias_gelu(F.linear(h, w), b)
        theirs = F.gelu(F.linear(h, w, b))
    assert ours.dtype == theirs.dtype == dtype
    our_error = (ours.double() - exact).abs().mean()
    their_error = (theirs.double() - exact).abs().mean()
    assert our_error <= 2 * their_error, (our_error.item(), their_error.item())


def test_bias_gradient_does_not_depend_on_the_thread_count():
    if not _extension.has_kernel(OP, "cpu"):
        pytest.skip("no compiled CPU kernel in this build")
    x, bias = inputs((300, 128))
    grad = torch.randn(300, 128)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(run(bias_gelu, (x, bias), grad)[1][1])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], other) for other in results[1:])


def test_float64_gradcheck():
    x, bias = (t.double().requires_grad_() for t in inputs((3, 16)))
    assert torch.autograd.gradcheck(lambda x, b: bias_gelu(x, b, approximate="tanh"), (x, bias))


def test_opcheck():
    if not _extension.EXTENSION_LOADED:
        pytest.skip("no compiled kernels in this build")
    x, bias = (t.requires_grad_() for t in inputs((3, 24)))
    op = torch.ops.electra_fast.bias_gelu.default
    torch.library.opcheck(op, (x, bias, False))
    torch.library.opcheck(op, (x.detach().bfloat16().requires_grad_(), bias, True))


def test_compile_fullgraph(impl):
    x, bias = inputs((2, 9, 32), torch.bfloat16)
    grad = torch.randn(2, 9, 32)
    compiled = torch.compile(bias_gelu, fullgraph=True, backend="aot_eager")
    got, got_grads = run(compiled, (x, bias), grad)
    want, want_grads = run(bias_gelu, (x, bias), grad)
    torch.testing.assert_close(got, want)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        (dict(bias=torch.ones(7)), ValueError, "bias must have shape [8]"),
        (dict(x=torch.zeros(2, 8, dtype=torch.long)), TypeError, "x must be float32"),
        (dict(bias=torch.ones(8, device="meta")), ValueError, "bias must be on x's device"),
        (dict(approximate="erf"), ValueError, "approximate must be 'none' or 'tanh', got 'erf'"),
        (dict(x=torch.zeros(())), ValueError, "x must have a last dimension"),
    ],
)
def test_bad_input_names_the_argument(change, error, words):
    x, bias = inputs((2, 8))
    args = dict(x=x, bias=bias, approximate="none")
    args.update(change)
    with pytest.raises(error, match=re.escape(words)):
        bias_gelu(**args)


def test_the_kernel_op_checks_its_arguments():
    if not _extension.has_kernel(OP, "cpu"):
        pytest.skip("no compiled CPU kernel in this build")
    x, bias = inputs((2, 8))
    with pytest.raises(ValueError, match=re.escape("bias must be contiguous float32 of shape [8]")):
        torch.ops.electra_fast.bias_gelu(x, bias.double(), False)
    with pytest.raises(ValueError, match="grad must have x's shape"):
        torch.ops.electra_fast.bias_gelu_backward(x[:1], x, bias, False)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("N", [8, 40, 64, 256, 1024, 3072, 2050])
def test_cuda_equals_cpu(N, aligned):
    """The same function on both devices: 16-byte loads for aligned rows of whole 8-column
    groups, one element at a time otherwise (misaligned views, N = 2050); 1 to 128 lanes a tile
    and several tiles for N = 3072. 77 rows leave the last row block part empty."""
    x, bias = inputs((77, N), torch.bfloat16)
    grad = torch.randn(77, N).bfloat16()
    out, (gx, gb) = run(bias_gelu, (x, bias), grad)
    place = (lambda t: misaligned(t.cuda())) if not aligned else (lambda t: t.cuda())
    cx, cgrad = place(x), place(grad)
    assert (cx.data_ptr() % 16 == 0) == aligned
    leaves = [cx.detach().requires_grad_(), bias.cuda().requires_grad_()]
    cuda_out = bias_gelu(*leaves)
    cuda_out.backward(cgrad)
    torch.testing.assert_close(cuda_out.cpu().float(), out.float(), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(leaves[0].grad.cpu().float(), gx.float(), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(leaves[1].grad.cpu(), gb, rtol=1e-4, atol=1e-3)
