"""generator_step: loss and gradients against torch, kernel == reference, reproducibility,
non-finite rows, opcheck, compile and bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

import electra_fast
from electra_fast import _extension
from tests.ops.sampling_cases import IGNORE, raw_step, step_inputs

OP = "generator_step"
# Odd V exercise the kernels' unaligned heads and scalar tails; 30522 is BERT's vocabulary.
SHAPES = [(1, 1), (1, 2), (3, 7), (5, 33), (16, 1000), (4, 4099), (2, 30522)]
LOW_PRECISION = [torch.bfloat16, torch.float16]


@pytest.fixture
def step(implementation, monkeypatch):
    """electra_fast.generator_step, running the implementation under test."""
    monkeypatch.setattr(_extension, "FORCE_REFERENCE", implementation == "reference")
    return electra_fast.generator_step


def cross_entropy(logits, labels):
    return F.cross_entropy(logits, labels, reduction="none", ignore_index=IGNORE)


@pytest.mark.parametrize(("M", "V"), SHAPES)
def test_loss_and_gradient_equal_torch(step, device, M, V):
    logits, labels = step_inputs(M, V, device=device)
    weights = torch.rand(M, device=device)  # an incoming gradient that differs per row
    ours = logits.clone().requires_grad_()
    out = step(ours, labels, seed=1)
    (out.loss * weights).sum().backward()
    theirs = logits.clone().requires_grad_()
    want = cross_entropy(theirs, labels)
    (want * weights).sum().backward()

    assert out.loss.dtype == torch.float32 and out.samples.dtype == torch.int64
    torch.testing.assert_close(out.loss, want.detach(), rtol=1e-6, atol=1e-5)
    assert torch.all(out.loss[labels == IGNORE] == 0)
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-5, atol=1e-6)
    assert torch.all(ours.grad[labels == IGNORE] == 0)
    assert torch.all((out.samples >= 0) & (out.samples < V))


def test_gradcheck_float64():
    logits, labels = step_inputs(6, 9, dtype=torch.float64)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: electra_fast.generator_step(x, labels, seed=3).loss, (logits,)
    )


@pytest.mark.parametrize(("M", "V"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, *LOW_PRECISION])
@pytest.mark.parametrize("disallow", [False, True])
def test_kernel_equals_reference(device, M, V, dtype, disallow):
    if not _extension.has_kernel(OP, device.type):
        pytest.skip(f"no compiled {device.type} kernel")
    if disallow and V < 2:
        pytest.skip("disallow_labels needs two columns")
    logits, labels = step_inputs(M, V, device=device, dtype=dtype)
    got = raw_step("electra_fast", logits, labels, seed=11, temperature=0.7, disallow=disallow)
    want = raw_step("electra_fast_ref", logits, labels, seed=11, temperature=0.7, disallow=disallow)
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-5)  # loss
    torch.testing.assert_close(got[2], want[2], rtol=1e-6, atol=1e-5)  # lse
    assert torch.equal(got[1], want[1])  # samples: the same noise, the same argmax


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, *LOW_PRECISION])
def test_cuda_samples_equal_cpu(dtype):
    if not (_extension.has_kernel(OP, "cuda") and _extension.has_kernel(OP, "cpu")):
        pytest.skip("needs both kernels")
    logits, labels = step_inputs(512, 30522, dtype=dtype)
    cpu = raw_step("electra_fast", logits, labels, seed=5, disallow=True)
    cuda = raw_step("electra_fast", logits.cuda(), labels.cuda(), seed=5, disallow=True)
    assert torch.equal(cpu[1], cuda[1].cpu())
    torch.testing.assert_close(cpu[0], cuda[0].cpu(), rtol=1e-6, atol=1e-5)


def test_same_seed_same_samples(step, device):
    logits, labels = step_inputs(64, 1000, device=device, scale=0.5)
    first, again = step(logits, labels, seed=7), step(logits, labels, seed=7)
    other = step(logits, labels, seed=8)
    assert torch.equal(first.samples, again.samples)
    assert not torch.equal(first.samples, other.samples)
    torch.manual_seed(3)
    drawn = step(logits, labels)
    torch.manual_seed(3)
    assert torch.equal(drawn.samples, step(logits, labels).samples)
    generator = torch.Generator(device).manual_seed(3)
    replay = torch.Generator(device).manual_seed(3)
    assert torch.equal(
        step(logits, labels, generator=generator).samples,
        step(logits, labels, generator=replay).samples,
    )


def test_disallow_labels_never_samples_the_label(step, device):
    # The label holds almost all the probability: without disallow it is nearly always drawn.
    logits, labels = step_inputs(2000, 5, device=device, scale=0.1, ignored=0.0)
    logits[torch.arange(2000), labels] = 20.0
    assert (step(logits, labels, seed=2).samples == labels).float().mean() > 0.99
    assert not torch.any(step(logits, labels, seed=2, disallow_labels=True).samples == labels)


def test_ignored_rows_are_not_disallowed(step, device):
    logits = torch.zeros(500, 3, device=device)
    logits[:, 1] = 30.0  # column 1 always wins
    labels = torch.full((500,), IGNORE, device=device)
    out = step(logits, labels, seed=0, disallow_labels=True)
    assert torch.all(out.samples == 1) and torch.all(out.loss == 0)


def test_non_finite_rows(step, device):
    V = 37
    logits = torch.randn(6, V, device=device)
    logits[0, 5] = math.nan
    logits[1, 9] = math.inf
    logits[2] = math.nan
    logits[3] = -math.inf
    logits[4, :30] = -math.inf  # finite elsewhere: a finite loss, never a -inf column
    labels = torch.tensor([1, 2, 3, 4, 33, 0], device=device)
    out = step(logits, labels, seed=4)
    assert not torch.isfinite(out.loss[:4]).any()
    assert torch.isfinite(out.loss[4:]).all()
    assert torch.all((out.samples >= 0) & (out.samples < V))
    assert out.samples[4] >= 30


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_low_precision_error_at_most_twice_torch(step, device, dtype):
    """Errors against fp64 at most 2x those of torch's same-dtype cross-entropy, as
    flash-attention's tests judge low-precision kernels."""
    logits, labels = step_inputs(64, 4099, device=device, dtype=dtype)
    weights = torch.rand(64, device=device)

    def loss_and_grad(fn, x):
        x = x.clone().requires_grad_()
        loss = fn(x)
        (loss * weights.to(loss.dtype)).sum().backward()
        return loss.detach().double(), x.grad.double()

    exact = loss_and_grad(lambda x: cross_entropy(x, labels), logits.double())
    ours = loss_and_grad(lambda x: step(x, labels, seed=0).loss, logits)
    torch_same_dtype = loss_and_grad(lambda x: cross_entropy(x, labels), logits)
    for got, baseline, want in zip(ours, torch_same_dtype, exact, strict=True):
        ours_error = (got - want).abs().max()
        torch_error = (baseline - want).abs().max()
        assert ours_error <= 2 * torch_error + 1e-6, (float(ours_error), float(torch_error))


def test_inplace_backward_writes_the_gradient_over_the_logits(step, device):
    logits, labels = step_inputs(8, 301, device=device)
    leaf = logits.clone().requires_grad_()
    step(leaf, labels, seed=0).loss.sum().backward()
    buffer = logits.clone().requires_grad_()
    scaled = buffer * 1.0  # a non-leaf, as a linear layer's output would be
    scaled.retain_grad()
    step(scaled, labels, seed=0, inplace_backward=True).loss.sum().backward()
    torch.testing.assert_close(scaled.grad, leaf.grad)
    torch.testing.assert_close(scaled.detach(), leaf.grad)  # the logits now hold the gradient
    torch.testing.assert_close(buffer.grad, leaf.grad)


@pytest.mark.parametrize("library", ["electra_fast", "electra_fast_ref"])
def test_opcheck(device, library):
    if library == "electra_fast" and not _extension.has_kernel(OP, device.type):
        pytest.skip(f"no {device.type} kernel")
    ops = getattr(torch.ops, library)
    logits, labels = step_inputs(5, 43, device=device)
    key = torch.tensor(9, device=device)
    lse = torch.logsumexp(logits, 1)
    grad = torch.rand(5, device=device)
    torch.library.opcheck(
        ops.generator_step.default,
        (logits.requires_grad_(), labels, key, 0.8, True, IGNORE, False, 2),
    )
    tile = logits.detach()[:, 8:24].contiguous()
    torch.library.opcheck(
        ops.generator_step_tile.default, (tile, labels, key, 1.0, True, IGNORE, 8, 43, 3)
    )
    torch.library.opcheck(
        ops.generator_step_backward.default, (grad, logits.detach(), labels, lse, IGNORE, 0)
    )
    torch.library.opcheck(
        ops.generator_step_backward_.default,
        (grad, logits.detach().clone(), labels, lse, IGNORE, 0),
    )


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("reference", [False, True], ids=["dispatch", "reference"])
def test_compile_fullgraph(monkeypatch, backend, reference):
    monkeypatch.setattr(_extension, "FORCE_REFERENCE", reference)
    logits, labels = step_inputs(12, 50)

    def forward(x, labels, seed=None):
        out = electra_fast.generator_step(x * 2, labels, seed=seed, inplace_backward=True)
        return out.loss, out.samples

    def run(fn):  # the backward runs outside the compiled region, as AOTAutograd compiles it
        x = logits.clone().requires_grad_()
        loss, samples = fn(x, labels, 5)
        loss.sum().backward()
        return loss, samples, x.grad

    compiled = torch.compile(forward, fullgraph=True, backend=backend)
    got, want = run(compiled), run(forward)
    torch.testing.assert_close(got[0], want[0])
    assert torch.equal(got[1], want[1])
    torch.testing.assert_close(got[2], want[2])
    # A key drawn inside the graph is drawn anew at every call, not baked in.
    assert not torch.equal(compiled(logits, labels)[1], compiled(logits, labels)[1])


def _bad(**change):
    logits, labels = step_inputs(4, 10, ignored=0.0)
    args = dict(logits=logits, labels=labels)
    args.update(change)
    return args


BAD_CALLS = [  # (description, arguments, exception, words the message must contain)
    ("int logits", _bad(logits=torch.zeros(4, 10, dtype=torch.long)), TypeError, "logits"),
    ("1-D logits", _bad(logits=torch.zeros(10)), ValueError, "logits"),
    ("no columns", _bad(logits=torch.zeros(4, 0)), ValueError, "logits"),
    ("int32 labels", _bad(labels=torch.zeros(4, dtype=torch.int32)), TypeError, "labels"),
    ("labels shape", _bad(labels=torch.zeros(3, dtype=torch.long)), ValueError, "labels"),
    ("label too big", _bad(labels=torch.tensor([0, 1, 10, 2])), ValueError, "labels"),
    ("label negative", _bad(labels=torch.tensor([0, -1, 3, 2])), ValueError, "labels"),
    ("temperature 0", _bad(temperature=0.0), ValueError, "temperature"),
    ("temperature < 0", _bad(temperature=-1.0), ValueError, "temperature"),
    ("temperature nan", _bad(temperature=math.nan), ValueError, "temperature"),
    (
        "disallow, V=1",
        _bad(
            logits=torch.zeros(4, 1), labels=torch.zeros(4, dtype=torch.long), disallow_labels=True
        ),
        ValueError,
        "disallow_labels",
    ),
    ("seed too big", _bad(seed=2**64), ValueError, "seed"),
]


@pytest.mark.parametrize(
    ("arguments", "error", "words"),
    [case[1:] for case in BAD_CALLS],
    ids=[case[0] for case in BAD_CALLS],
)
def test_bad_input_names_the_argument(step, arguments, error, words):
    with pytest.raises(error, match=words):
        step(**arguments)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_labels_on_another_device():
    logits, labels = step_inputs(4, 10)
    with pytest.raises(ValueError, match="labels"):
        electra_fast.generator_step(logits.cuda(), labels)


def test_kernel_rejects_bad_labels_itself():
    """The C++ boundary checks too, for callers of torch.ops.electra_fast directly."""
    if not _extension.has_kernel(OP, "cpu"):
        pytest.skip("no compiled kernel")
    logits, _ = step_inputs(3, 10)
    with pytest.raises(ValueError, match="labels must be in"):
        raw_step("electra_fast", logits, torch.tensor([0, 10, 1]))
    with pytest.raises(ValueError, match="temperature"):
        raw_step("electra_fast", logits, torch.tensor([0, 1, 1]), temperature=0.0)
    with pytest.raises(ValueError, match="logits must have 2 dimensions"):
        raw_step("electra_fast", logits[0], torch.tensor([0]))


def test_a_split_batch_samples_as_the_whole(step, device):
    """Ranks sharing a key with row_offset = rank * M draw what one process draws."""
    logits, labels = step_inputs(64, 301, device=device, scale=0.5)
    whole = step(logits, labels, seed=21, disallow_labels=True).samples
    halves = [
        step(logits[r * 32 : (r + 1) * 32], labels[r * 32 : (r + 1) * 32], seed=21,
             disallow_labels=True, row_offset=32 * r).samples
        for r in range(2)
    ]  # fmt: skip
    assert torch.equal(torch.cat(halves), whole)
    with pytest.raises(ValueError, match="row_offset"):
        step(logits, labels, row_offset=-1)
