"""column_sums on the compiled kernels (CPU, CUDA) and on the torch reference: the sums against
float64 within the bound of float32 summation; the same bits with any number of CPU threads;
the gradient; misaligned rows and many blocks on a GPU; opcheck, compile and bad input."""

import re

import pytest
import torch

from electra_fast import _extension, column_sums
from tests.ops.views import misaligned

OP = "column_sums"


@pytest.fixture
def impl(implementation, monkeypatch):
    monkeypatch.setattr(_extension, "FORCE_REFERENCE", implementation == "reference")
    return implementation


def values(shape, dtype=torch.float32, seed=0):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3).to(dtype)


def assert_float32_sums(got, x):
    """Each column's float32 sum of values that convert to float32 exactly: whatever the order,
    within (rows) x 2^-24 x the sum of the magnitudes of the float64 sum (each of the rows - 1
    additions rounds once, and the result once more)."""
    matrix = x.double().flatten(0, -2) if x.dim() > 1 else x.double()[None]
    want = matrix.sum(0)
    bound = max(matrix.shape[0], 1) * 2.0**-24 * matrix.abs().sum(0) + 1e-30
    assert got.dtype == torch.float32 and got.shape == want.shape
    error = (got.double().cpu() - want.cpu()).abs()
    assert (error <= bound.cpu()).all(), (error - bound.cpu()).max().item()


SHAPES = [(1, 1), (1, 8), (3, 5, 64), (77, 256), (70, 768), (1000, 24), (33, 1030), (2, 3, 7),
          (0, 16), (5, 0), (16,)]  # fmt: skip
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_equals_the_float64_sums(impl, device, shape, dtype):
    x = values(shape, dtype).to(device)
    assert_float32_sums(column_sums(x), x)


def test_float64_stays_float64(impl):
    x = values((40, 9)).double()
    got = column_sums(x)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, x.sum(0), rtol=1e-12, atol=1e-12)


def test_does_not_depend_on_the_thread_count():
    if not _extension.has_kernel(OP, "cpu"):
        pytest.skip("no compiled CPU kernel in this build")
    x = values((1000, 130), torch.bfloat16)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(column_sums(x))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], other) for other in results[1:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gradient_is_the_incoming_one_on_every_row(impl, device, dtype):
    x = values((2, 3, 8), dtype).to(device).requires_grad_()
    grad = torch.arange(8.0, device=device)
    column_sums(x).backward(grad)
    assert x.grad.dtype == dtype
    assert torch.equal(x.grad, grad.to(dtype).expand(2, 3, 8))


def test_opcheck():
    if not _extension.EXTENSION_LOADED:
        pytest.skip("no compiled kernels in this build")
    op = torch.ops.electra_fast.column_sums.default
    torch.library.opcheck(op, (values((5, 24)).requires_grad_(),))
    torch.library.opcheck(op, (values((2, 3, 16), torch.bfloat16).requires_grad_(),))


def test_compile_fullgraph(impl):
    x = values((6, 9, 32), torch.bfloat16).requires_grad_()
    compiled = torch.compile(column_sums, fullgraph=True, backend="aot_eager")
    got = compiled(x)
    torch.testing.assert_close(got, column_sums(x.detach()), rtol=0, atol=0)
    got.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


@pytest.mark.parametrize(
    ("x", "error", "words"),
    [
        (torch.zeros(2, 8, dtype=torch.long), TypeError, "x must be float32, bfloat16, float16"),
        (torch.zeros(()), ValueError, "x must have a last dimension, got shape ()"),
        ([1.0, 2.0], TypeError, "x must be a tensor, got list"),
    ],
)
def test_bad_input_names_the_argument(x, error, words):
    with pytest.raises(error, match=re.escape(words)):
        column_sums(x)


def test_the_kernel_op_checks_its_arguments():
    if not _extension.has_kernel(OP, "cpu"):
        pytest.skip("no compiled CPU kernel in this build")
    op = torch.ops.electra_fast.column_sums
    with pytest.raises(ValueError, match="x must be contiguous"):
        op(values((8, 4)).t())
    with pytest.raises(TypeError, match="x must be float32, bfloat16 or float16, got Double"):
        op(values((8, 4)).double())
    with pytest.raises(ValueError, match="x must have a last dimension"):
        op(torch.zeros(()))


def test_a_non_contiguous_input_is_summed_as_its_values():
    x = values((16, 12))
    assert_float32_sums(column_sums(x.t()), x.t())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "misaligned"])
@pytest.mark.parametrize(
    "shape", [(77, 8), (77, 40), (300, 192), (16384, 768), (2432, 4096), (77, 2050), (3, 5, 64)]
)
def test_cuda_sums(shape, aligned):
    """16-byte loads for aligned rows of whole 8-column groups, one element at a time otherwise
    (misaligned views, N = 2050); 1 to 128 lanes a tile and several tiles for N = 4096; 77 rows
    leave the last block of rows part empty; ELECTRA-small's qkv gradient (16,384 x 768) and a
    tile of its generator's logits (2,432 x 4,096) take hundreds of blocks."""
    x = values(shape, torch.bfloat16).cuda()
    if not aligned:
        x = misaligned(x)
    assert (x.data_ptr() % 16 == 0) == aligned
    assert_float32_sums(column_sums(x), x)
