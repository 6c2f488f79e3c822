"""generator_step_linear (stage 2) equals generator_step on the materialised logits: loss,
samples for the same seed, and all three gradients; and it never creates an [M, V] tensor."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import electra_fast
from electra_fast import _extension
from tests.ops.sampling_cases import IGNORE

OP = "generator_step"


def linear_inputs(M, V, E, *, dtype=torch.float32, device="cpu", seed=0, bias=True):
    """Dyadic values with few bits, so that every logit is exact in fp32 whatever the matmul's
    blocking: both paths then round the same logits to `dtype` and draw the same samples."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randint(-4, 5, (M, E), generator=g) / 4
    weight = torch.randint(-4, 5, (V, E), generator=g) / 8
    b = torch.randint(-8, 9, (V,), generator=g) / 8 if bias else None
    labels = torch.randint(0, V, (M,), generator=g)
    labels[torch.rand(M, generator=g) < 0.2] = IGNORE
    to = dict(dtype=dtype, device=device)
    return (
        hidden.to(**to),
        weight.to(**to),
        None if b is None else b.to(**to),
        labels.to(device),
    )


def run_both(step_kwargs, hidden, weight, bias, labels, tile, grad_weights):
    """(loss, samples, grads) of the fused path and of linear + generator_step."""
    results = []
    for fused in (True, False):
        params = [t.clone().requires_grad_() for t in (hidden, weight, bias) if t is not None]
        h, w, b = params[0], params[1], params[2] if bias is not None else None
        if fused:
            out = electra_fast.generator_step_linear(
                h, w, b, labels, vocab_tile=tile, **step_kwargs
            )
        else:
            logits = h @ w.t() if b is None else torch.addmm(b, h, w.t())
            out = electra_fast.generator_step(logits, labels, **step_kwargs)
        (out.loss * grad_weights).sum().backward()
        results.append((out.loss, out.samples, [p.grad for p in params]))
    return results


@pytest.mark.parametrize(("V", "tile"), [(37, 8), (100, 24), (100, 1000), (1001, 256)])
@pytest.mark.parametrize("disallow", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_generator_step(implementation, monkeypatch, device, V, tile, disallow, bias):
    monkeypatch.setattr(_extension, "FORCE_REFERENCE", implementation == "reference")
    hidden, weight, b, labels = linear_inputs(24, V, 16, device=device, bias=bias)
    weights = torch.rand(24, device=device)
    kwargs = dict(seed=3, temperature=0.7, disallow_labels=disallow)
    (loss, samples, grads), (want_loss, want_samples, want_grads) = run_both(
        kwargs, hidden, weight, b, labels, tile, weights
    )
    torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=1e-5)
    assert torch.equal(samples, want_samples)
    for got, want in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_ties_and_nan_across_tiles_resolve_as_in_one_pass(implementation, monkeypatch, device):
    """+inf logits in two tiles tie at +inf: the earlier tile's (smaller) column wins, as in one
    pass over the row; a tile of NaN logits never wins, and makes the row's loss NaN."""
    monkeypatch.setattr(_extension, "FORCE_REFERENCE", implementation == "reference")
    hidden, weight, b, labels = linear_inputs(6, 40, 8, device=device)
    b[[13, 35]] = torch.inf  # tiles 1 and 4 of 8 columns: every row ties at +inf
    (loss, samples, _), (want_loss, want_samples, _) = run_both(
        dict(seed=1), hidden, weight, b, labels, 8, torch.ones(6, device=device)
    )
    assert torch.equal(samples, want_samples) and (samples == 13).all()
    hidden, weight, b, labels = linear_inputs(6, 40, 8, device=device)
    b[16:24] = torch.nan  # tile 2
    (loss, samples, _), (want_loss, want_samples, _) = run_both(
        dict(seed=1), hidden, weight, b, labels, 8, torch.ones(6, device=device)
    )
    assert torch.equal(samples, want_samples) and not ((samples >= 16) & (samples < 24)).any()
    real = labels != IGNORE
    assert loss[real].isnan().all() and want_loss[real].isnan().all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_equals_generator_step(implementation, monkeypatch, device, dtype):
    monkeypatch.setattr(_extension, "FORCE_REFERENCE", implementation == "reference")
    hidden, weight, b, labels = linear_inputs(32, 300, 8, dtype=dtype, device=device)
    weights = torch.rand(32, device=device)
    (loss, samples, grads), (want_loss, want_samples, want_grads) = run_both(
        dict(seed=5), hidden, weight, b, labels, 64, weights
    )
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-4)
    assert torch.equal(samples, want_samples)
    for got, want in zip(grads, want_grads, strict=True):
        # The fused path sums d hidden over tiles in fp32 and each weight row once: it rounds
        # less, so it is compared with the dtype's tolerance.
        torch.testing.assert_close(got, want, **({"rtol": 2e-2, "atol": 2e-2}))


def test_gradcheck_float64():
    hidden, weight, b, labels = linear_inputs(5, 11, 3, dtype=torch.float64)
    params = tuple(t.requires_grad_() for t in (hidden, weight, b))
    assert torch.autograd.gradcheck(
        lambda h, w, bias: (
            electra_fast.generator_step_linear(h, w, bias, labels, seed=1, vocab_tile=4).loss
        ),
        params,
    )


class LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an aten op returns."""

    def __init__(self):
        super().__init__()
        self.most = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.most = max(self.most, t.numel())
        return out


def test_never_creates_an_m_by_v_tensor():
    M, V, E, tile = 256, 2000, 32, 128
    hidden, weight, b, labels = linear_inputs(M, V, E)
    params = [t.requires_grad_() for t in (hidden, weight, b)]
    with LargestTensor() as fused:
        out = electra_fast.generator_step_linear(*params, labels, seed=0, vocab_tile=tile)
        out.loss.sum().backward()
    assert fused.most <= max(M * tile, V * E), fused.most  # a tile, or d weight itself
    with LargestTensor() as unfused:  # the check sees the [M, V] logits when they exist
        electra_fast.generator_step(hidden @ weight.t() + b, labels, seed=0).loss.sum().backward()
    assert unfused.most >= M * V


BAD_CALLS = [
    ("weight E", dict(weight=torch.zeros(10, 5)), ValueError, "weight"),
    ("bias V", dict(bias=torch.zeros(9)), ValueError, "bias"),
    ("weight dtype", dict(weight=torch.zeros(10, 4, dtype=torch.float16)), TypeError, "weight"),
    ("1-D hidden", dict(hidden=torch.zeros(4)), ValueError, "hidden"),
    ("labels shape", dict(labels=torch.zeros(3, dtype=torch.long)), ValueError, "labels"),
    ("label range", dict(labels=torch.tensor([0, 1, 2, 10])), ValueError, "labels"),
    ("tile", dict(vocab_tile=0), ValueError, "vocab_tile"),
    ("temperature", dict(temperature=0.0), ValueError, "temperature"),
]


@pytest.mark.parametrize(
    ("change", "error", "words"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS]
)
def test_bad_input_names_the_argument(change, error, words):
    args = dict(
        hidden=torch.zeros(4, 4),
        weight=torch.zeros(10, 4),
        bias=torch.zeros(10),
        labels=torch.tensor([0, 1, 2, 3]),
    )
    args.update(change)
    with pytest.raises(error, match=words):
        electra_fast.generator_step_linear(**args)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph(backend):
    hidden, weight, b, labels = linear_inputs(16, 100, 8)

    def forward(h, w, bias):
        out = electra_fast.generator_step_linear(h, w, bias, labels, seed=1, vocab_tile=32)
        return out.loss, out.samples

    def run(fn):
        params = [t.clone().requires_grad_() for t in (hidden, weight, b)]
        loss, samples = fn(*params)
        loss.sum().backward()
        return loss, samples, [p.grad for p in params]

    got = run(torch.compile(forward, fullgraph=True, backend=backend))
    want = run(forward)
    torch.testing.assert_close(got[0], want[0])
    assert torch.equal(got[1], want[1])
    for a, b_ in zip(got[2], want[2], strict=True):
        torch.testing.assert_close(a, b_)


class MatmulDtypes(TorchDispatchMode):
    """Records the operand dtypes of every matmul an aten op runs, by the shape it makes."""

    def __init__(self):
        super().__init__()
        self.seen = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm):
            dtypes = tuple(a.dtype for a in args if isinstance(a, torch.Tensor))
            self.seen.setdefault(tuple(out.shape), set()).add(dtypes)
        return out


def test_autocast_runs_both_passes_in_its_dtype():
    """As F.linear under autocast: forward and backward compute the logits in bf16 (backward
    runs outside autocast and once recomputed them in fp32), and the gradients come back in the
    parameters' fp32, equal to linear + generator_step's under the same autocast. (The weight's
    gradient is a float32 product of bf16 operands: on the CPU, of their float32 copies.)"""
    hidden, weight, b, labels = linear_inputs(32, 300, 8)
    weights = torch.rand(32)
    with MatmulDtypes() as matmuls, torch.autocast("cpu", torch.bfloat16):
        (loss, samples, grads), (want_loss, want_samples, want_grads) = run_both(
            dict(seed=5), hidden, weight, b, labels, 64, weights
        )
    tiles = {shape: dtypes for shape, dtypes in matmuls.seen.items() if shape[0] == 32}
    assert {(32, 64), (32, 300)} <= tiles.keys()  # the fused path's tiles, and the logits
    for shape, dtypes in tiles.items():
        assert dtypes <= {(torch.bfloat16,) * 2, (torch.bfloat16,) * 3}, (shape, dtypes)
    torch.testing.assert_close(loss, want_loss)
    assert torch.equal(samples, want_samples)
    for got, want in zip(grads, want_grads, strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


def test_autocast_takes_mixed_dtypes():
    """As F.linear under autocast: a bf16 hidden with fp32 weight and bias (what the generator
    head gives under CPU autocast) is accepted, and each gradient comes back in its own input's
    dtype, equal to linear + generator_step's under the same autocast."""
    hidden, weight, b, labels = linear_inputs(32, 300, 8)
    with torch.autocast("cpu", torch.bfloat16):
        (loss, samples, grads), (want_loss, want_samples, want_grads) = run_both(
            dict(seed=5), hidden.bfloat16(), weight, b, labels, 64, torch.rand(32)
        )
    torch.testing.assert_close(loss, want_loss)
    assert torch.equal(samples, want_samples)
    assert [g.dtype for g in grads] == [torch.bfloat16, torch.float32, torch.float32]
    for got, want in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


def test_mixed_dtypes_outside_autocast_are_an_error():
    hidden, weight, b, labels = linear_inputs(4, 10, 8)
    with pytest.raises(TypeError, match="weight must have hidden's dtype"):
        electra_fast.generator_step_linear(hidden.bfloat16(), weight, b, labels)


def test_compiles_under_autocast():
    """torch.compile traces backward with forward's autocast state: with fp32 parameters it once
    failed there ('Expected out tensor to have dtype torch.bfloat16 but got torch.float32')."""
    hidden, weight, b, labels = linear_inputs(16, 100, 8)

    def forward(h, w, bias):
        with torch.autocast("cpu", torch.bfloat16):
            return electra_fast.generator_step_linear(h, w, bias, labels, seed=1, vocab_tile=32)

    params = [t.clone().requires_grad_() for t in (hidden, weight, b)]
    got = torch.compile(forward, fullgraph=True, backend="aot_eager")(*params)
    got.loss.sum().backward()
    want_params = [t.clone().requires_grad_() for t in (hidden, weight, b)]
    want = forward(*want_params)
    want.loss.sum().backward()
    torch.testing.assert_close(got.loss, want.loss)
    assert torch.equal(got.samples, want.samples)
    for p, q in zip(params, want_params, strict=True):
        torch.testing.assert_close(p.grad, q.grad)
