"""dropout_add_layer_norm on the compiled kernels (CPU, CUDA) and on the torch reference: against
torch's own layer_norm given the dropout mask, in float64 for the error budget, with and without
x_bias; the dropout stream (rate, the same mask in both passes, reproducible, CPU = CUDA);
parameter gradients that do not depend on the thread count; opcheck, compile and bad input."""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from electra_fast import _extension, dropout_add_layer_norm
from electra_fast.ops.attention import dropout_keep_scale
from electra_fast.ops.layer_norm import residual_keep_mask
from tests.ops.views import misaligned

OP = "dropout_add_layer_norm"


@pytest.fixture
def impl(implementation, monkeypatch):
    monkeypatch.setattr(_extension, "FORCE_REFERENCE", implementation == "reference")
    return implementation


def inputs(shape, x_dtype=torch.float32, r_dtype=torch.float32, device="cpu", seed=0,
           x_bias=False):  # fmt: skip
    """x, residual, weight, bias and (x_bias) x_bias."""
    g = torch.Generator().manual_seed(seed)
    H = shape[-1]
    x = torch.randn(shape, generator=g).to(x_dtype)
    residual = (torch.randn(shape, generator=g) * 3 + 1).to(r_dtype)
    weight = torch.randn(H, generator=g) * 0.5 + 1
    bias = torch.randn(H, generator=g) * 0.1
    extra = (torch.randn(H, generator=g) * 2,) if x_bias else ()
    return [t.to(device) for t in (x, residual, weight, bias, *extra)]


def oracle(x, residual, weight, bias, keep, p, eps, x_bias=None):
    """torch's layer_norm in float64 on residual + (x + x_bias) * keep * scale."""
    branch = x.double() if x_bias is None else x.double() + x_bias.double()
    branch = branch if keep is None else branch * keep * dropout_keep_scale(p)
    total = residual.double() + branch
    return F.layer_norm(total, x.shape[-1:], weight.double(), bias.double(), eps)


def op(dropout_p, seed, eps=1e-5):
    """dropout_add_layer_norm as a function of its tensors, x_bias last and optional."""

    def call(x, residual, weight, bias, x_bias=None):
        return dropout_add_layer_norm(
            x, residual, weight, bias, x_bias=x_bias, dropout_p=dropout_p, eps=eps, seed=seed
        )

    return call


def run(fn, tensors, grad, place=torch.clone):
    """fn's output and the inputs' gradients; the inputs are copies that `place` makes."""
    leaves = [place(t.detach()).requires_grad_() for t in tensors]
    out = fn(*leaves)
    out.backward(grad.to(out.dtype))
    return out, [t.grad for t in leaves]


SHAPES = [(1, 8), (3, 5, 64), (2, 77, 256), (4, 1024), (6, 40), (2, 255), (3, 263)]
DTYPES = [  # x, residual: all float32 (CPU training), autocast's mix, all half
    (torch.float32, torch.float32),
    (torch.bfloat16, torch.float32),
    (torch.float16, torch.float32),
    (torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float16),
]


@pytest.mark.parametrize("x_bias", [False, True], ids=["", "x_bias"])
@pytest.mark.parametrize("p", [0.0, 0.1])
@pytest.mark.parametrize("dtypes", DTYPES, ids=lambda d: f"{d[0]}-{d[1]}".replace("torch.", ""))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_equals_layer_norm_of_the_dropped_sum(impl, device, shape, dtypes, p, x_bias):
    """Output and all gradients against float64 layer_norm with the same mask: fp32 to about
    1e-5; a half-precision output to the rounding of its dtype. x_bias's gradient is a sum
    over the rows of fp32 terms, like the weight's and the bias's."""
    tensors = inputs(shape, *dtypes, device=device, x_bias=x_bias)
    eps, seed = 1e-12, torch.tensor(99, device=device)
    rows, H = tensors[0].numel() // shape[-1], shape[-1]
    keep = residual_keep_mask(seed, rows, H, p, device).view(shape) if p > 0 else None
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)

    def exact(x, residual, weight, bias, x_bias=None):
        return oracle(x, residual, weight, bias, keep, p, eps, x_bias)

    out, grads = run(op(p, seed, eps), tensors, grad)
    want, want_grads = run(exact, tensors, grad)
    assert out.dtype == dtypes[1]
    half = dtypes[1] != torch.float32
    tolerance = dict(rtol=1e-2, atol=2e-2) if half else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.double(), want, **tolerance)
    names = ("x", "residual", "weight", "bias", "x_bias")[: len(tensors)]
    x, residual = tensors[:2]
    for name, got, wanted in zip(names, grads, want_grads, strict=True):
        # The gradients of half-precision x and residual are rounded to their dtype; the
        # weight and bias gradients are sums over the rows of fp32 terms.
        rounded = half or (name == "x" and dtypes[0] != torch.float32)
        scale = max(1.0, wanted.abs().max().item())
        tol = dict(rtol=2e-2, atol=2e-2 * scale) if rounded else dict(rtol=1e-4, atol=1e-4 * scale)
        torch.testing.assert_close(got.double(), wanted.double(), msg=name, **tol)
        assert got.dtype == {"x": x.dtype, "residual": residual.dtype}.get(name, torch.float32)


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize(
    "dtypes", DTYPES[1:4], ids=lambda d: f"{d[0]}-{d[1]}".replace("torch.", "")
)
def test_the_output_dtype_is_torchs(impl, device, dtypes, autocast):
    """With and without autocast on the device: the dtype torch's dropout, add and layer_norm
    give (under CUDA autocast float32 even for half inputs, layer_norm being a float32 op there;
    on the CPU autocast leaves layer_norm alone)."""
    x, residual, weight, bias = inputs((3, 16), *dtypes, device=device)
    half = torch.float16 if torch.float16 in dtypes else torch.bfloat16
    with torch.autocast(device.type, dtype=half, enabled=autocast):
        want = F.layer_norm(residual + F.dropout(x, 0.1), (16,), weight, bias).dtype
        got = dropout_add_layer_norm(x, residual, weight, bias, dropout_p=0.1, seed=3).dtype
    assert got == want


def test_the_reference_is_torch_without_dropout():
    """p = 0: exactly residual + x through torch's layer_norm, in float32."""
    x, residual, weight, bias = inputs((5, 48))
    from electra_fast.ops.layer_norm import dropout_add_layer_norm_reference

    got = dropout_add_layer_norm_reference(x, residual, weight, bias, None, 0.0, 1e-5)
    assert torch.equal(got, F.layer_norm(residual + x, (48,), weight, bias, 1e-5))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keeps_one_minus_p_scaled_exactly(impl, device, p):
    """With residual 0, weight 1 and bias 0 is out a function of the dropped x alone; with x
    all ones the kept fraction is what the output's mean says, within binomial bounds. The
    dropped entries are exactly the mask's."""
    rows, H = 400, 256
    x = torch.ones(rows, H, device=device)
    zero, one = torch.zeros(H, device=device), torch.ones(H, device=device)
    seed = torch.tensor(5, device=device)
    out = dropout_add_layer_norm(x, torch.zeros_like(x), one, zero, dropout_p=p, seed=seed)
    keep = residual_keep_mask(seed, rows, H, p, device)
    # A row of kept scale's and dropped 0's normalises to two values: the kept ones are the
    # larger (unless a row kept all or nothing, which these sizes make impossible in practice).
    kept = out > out.mean(dim=1, keepdim=True)
    assert torch.equal(kept, keep)
    fraction = keep.float().mean().item()
    bound = 5 * math.sqrt(p * (1 - p) / keep.numel())
    assert abs(fraction - (1 - p)) < bound, (fraction, 1 - p, bound)


def test_same_seed_same_output_and_the_generator_draws_the_key(impl, device):
    x, residual, weight, bias = inputs((4, 64), device=device)

    def call(**key):
        return dropout_add_layer_norm(x, residual, weight, bias, dropout_p=0.3, **key)

    assert torch.equal(call(seed=1), call(seed=1))
    assert not torch.equal(call(seed=1), call(seed=2))
    torch.manual_seed(0)
    drawn = call()
    torch.manual_seed(0)
    assert torch.equal(drawn, call())


def test_parameter_gradients_do_not_depend_on_the_thread_count():
    """A resumed run must repeat an uninterrupted one bit for bit (pretraining's resume test),
    whatever the threads: the kernel sums fixed blocks of rows in a fixed order."""
    if not _extension.has_kernel(OP, "cpu"):
        pytest.skip("no compiled CPU kernel in this build")
    tensors = inputs((300, 128), x_bias=True)
    grad = torch.randn(300, 128)
    threads = torch.get_num_threads()
    results = []

    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            _, grads = run(op(0.1, 4), tensors, grad)
            results.append(grads)
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


def test_float64_gradcheck():
    """float64 runs the reference; its gradients against finite differences."""
    tensors = [t.double().requires_grad_() for t in inputs((3, 16), x_bias=True)]
    assert torch.autograd.gradcheck(op(0.25, 7), tensors)


def test_opcheck():
    if not _extension.EXTENSION_LOADED:
        pytest.skip("no compiled kernels in this build")
    x, residual, weight, bias, x_bias = (t.requires_grad_() for t in inputs((3, 24), x_bias=True))
    op = torch.ops.electra_fast.dropout_add_layer_norm.default
    key = torch.tensor(3)
    torch.library.opcheck(op, (x, residual, weight, bias, None, key, 0.2, 1e-5, False))
    torch.library.opcheck(op, (x, residual, weight, bias, x_bias, key, 0.2, 1e-5, False))
    x16 = x.detach().bfloat16().requires_grad_()
    torch.library.opcheck(op, (x16, residual, weight, bias, x_bias, None, 0.0, 1e-5, False))
    torch.library.opcheck(op, (x16, residual, weight, bias, x_bias, key, 0.2, 1e-5, True))


def out_x_and_summed(tensors, p, seed, grads, device=None):
    """(out, out_x) of one call with_out_x and the inputs' gradients from `grads` (out's and
    out_x's, either None: not used); and the plain call's output and inputs' gradients given
    the sum of the two gradients in out's dtype, as autograd would add them."""
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out, out_x = dropout_add_layer_norm(*leaves[:4], x_bias=(leaves[4:] or [None])[0],
                                        dropout_p=p, seed=seed, with_out_x=True)  # fmt: skip
    used = [(t, g) for t, g in zip((out, out_x), grads, strict=True) if g is not None]
    torch.autograd.backward([t for t, _ in used], [g for _, g in used])
    total = sum(g.to(out.dtype) for g in grads if g is not None)
    plain, plain_grads = run(op(p, seed), tensors, total)
    return (out, out_x, [t.grad for t in leaves]), (plain, plain_grads)


@pytest.mark.parametrize("used", ["both", "out", "out_x"])
@pytest.mark.parametrize("x_bias", [False, True], ids=["", "x_bias"])
@pytest.mark.parametrize("dtypes", DTYPES, ids=lambda d: f"{d[0]}-{d[1]}".replace("torch.", ""))
def test_out_x_is_the_output_in_xs_dtype_and_its_gradient_adds(impl, device, dtypes, x_bias, used):
    """out_x equals out.to(x.dtype) to the bit, and the gradients of a call whose out and out_x
    both (or either alone) reach the loss equal those of the plain call given the sum of the
    two gradients: the kernel adds them in float32 as autograd would."""
    tensors = inputs((5, 3, 64), *dtypes, device=device, x_bias=x_bias)
    g = torch.Generator().manual_seed(2)
    grad = torch.randn(5, 3, 64, generator=g).to(device=device, dtype=dtypes[1])
    grad_x = torch.randn(5, 3, 64, generator=g).to(device=device, dtype=dtypes[0])
    grads = {"both": (grad, grad_x), "out": (grad, None), "out_x": (None, grad_x)}[used]
    seed = torch.tensor(5, device=device)
    (out, out_x, got), (plain, want) = out_x_and_summed(tensors, 0.1, seed, grads)
    assert torch.equal(out, plain)
    assert out_x.dtype == dtypes[0] and torch.equal(out_x, out.to(dtypes[0]))
    for name, a, b in zip(("x", "residual", "weight", "bias", "x_bias"), got, want, strict=False):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("p", [0.0, 0.1])
def test_compile_fullgraph(impl, p):
    tensors = inputs((2, 9, 32), torch.bfloat16, x_bias=True)
    seed = torch.tensor(11)
    forward = op(p, seed)

    grad = torch.randn(2, 9, 32)
    compiled = torch.compile(forward, fullgraph=True, backend="aot_eager")
    got, got_grads = run(compiled, tensors, grad)
    want, want_grads = run(forward, tensors, grad)
    torch.testing.assert_close(got, want)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        (dict(residual=torch.zeros(3, 8)), ValueError, "residual must have x's shape"),
        (dict(weight=torch.ones(7)), ValueError, "weight must have shape [8]"),
        (dict(bias=torch.ones(2, 8)), ValueError, "bias must have shape [8]"),
        (dict(x_bias=torch.ones(9)), ValueError, "x_bias must have shape [8]"),
        (dict(x_bias=torch.ones(8, dtype=torch.long)), TypeError, "x_bias must be float32"),
        (dict(x=torch.zeros(2, 8, dtype=torch.long)), TypeError, "x must be float32"),
        (dict(dropout_p=1.0), ValueError, "dropout_p must be in [0, 1), got 1.0"),
        (dict(eps=0.0), ValueError, "eps must be positive, got 0.0"),
        (dict(residual=torch.zeros(2, 8, device="meta")), ValueError, "residual must be on x's"),
    ],
)
def test_bad_input_names_the_argument(change, error, words):
    x, residual, weight, bias = inputs((2, 8))
    args = dict(x=x, residual=residual, weight=weight, bias=bias, dropout_p=0.1, eps=1e-5, seed=1)
    args.update(change)
    with pytest.raises(error, match=re.escape(words)):
        dropout_add_layer_norm(**args)


def test_the_kernel_op_refuses_a_missing_key():
    if not _extension.has_kernel(OP, "cpu"):
        pytest.skip("no compiled CPU kernel in this build")
    x, residual, weight, bias = inputs((2, 8))
    with pytest.raises(ValueError, match="seed is required when dropout_p > 0"):
        torch.ops.electra_fast.dropout_add_layer_norm(
            x, residual, weight, bias, None, None, 0.1, 1e-5, False
        )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("x_bias", [False, True], ids=["", "x_bias"])
@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("H", [8, 40, 64, 128, 256, 512, 768, 1024, 2048, 4104])
def test_cuda_equals_cpu(H, aligned, x_bias):
    """The same key drops the same elements on both devices. On the GPU, rows of up to 1024
    columns in aligned tensors take the row kernels (8, 16 or 32 lanes a row, 1 to 4 chunks a
    lane); 2048 and misaligned views the loop kernels (2048 with one warp per block in the
    backward); 4104 with x_bias, the sum made before the kernel. 37 rows leave the last block
    of each kernel part empty."""
    tensors = inputs((37, H), torch.bfloat16, torch.float32, x_bias=x_bias)
    grad = torch.randn(37, H)

    def place(t):
        t = misaligned(t.cuda()) if not aligned else t.cuda()
        assert (t.data_ptr() % 16 == 0) == aligned
        return t

    call = op(0.1, 21)

    out, grads = run(call, tensors, grad)
    cuda_out, cuda_grads = run(call, tensors, place(grad), place)
    torch.testing.assert_close(cuda_out.cpu(), out, rtol=1e-5, atol=1e-5)
    assert torch.equal(cuda_grads[0].cpu() == 0, grads[0] == 0)  # the same dropped elements
    for a, b in zip(cuda_grads, grads, strict=True):
        torch.testing.assert_close(a.cpu().float(), b.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("x_bias", [False, True], ids=["", "x_bias"])
@pytest.mark.parametrize("H", [64, 256, 1024, 2048])
def test_cuda_out_x_is_the_output_in_xs_dtype_and_its_gradient_adds(H, x_bias):
    """The row kernels (up to 1024) and the loop kernels (2048) write out_x and add its
    gradient: the same checks as on the CPU, on CUDA autocast's mix of dtypes."""
    tensors = inputs((37, H), torch.bfloat16, torch.float32, device="cuda", x_bias=x_bias)
    g = torch.Generator().manual_seed(2)
    grads = (torch.randn(37, H, generator=g).cuda(), torch.randn(37, H, generator=g).cuda())
    grads = (grads[0], grads[1].bfloat16())
    seed = torch.tensor(5, device="cuda")
    (out, out_x, got), (plain, want) = out_x_and_summed(tensors, 0.1, seed, grads)
    assert torch.equal(out, plain)
    assert torch.equal(out_x, out.bfloat16())
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
