"""attention_qkvpacked: over one qkv tensor as the encoder's fused projection makes it, the
output and the generator draws of attention over its three views, and their three gradients as
one tensor; in the kernels' path that gradient comes from the kernels, with no stack of three
(opcheck of both ops, compile, bad input)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import electra_fast
from electra_fast import _extension
from tests.ops.test_attention import attention_module, qkv

OP = "attention_qkv_forward"


@pytest.fixture
def impl(implementation, monkeypatch):
    monkeypatch.setattr(_extension, "FORCE_REFERENCE", implementation == "reference")
    monkeypatch.setattr(attention_module, "CPU_KERNEL_WITHOUT_DROPOUT", True)
    return implementation


def fused(B, L, H, D, device, dtype=None, seed=0):
    """[B, L, 3, H, D] with distinct values in q, k and v."""
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    return torch.stack(qkv(B, L, H, D, dtype=dtype, device=device, seed=seed), dim=2)


def layouts(device):
    """(name, qkv, layout arguments) for the padded and the packed layout of three sequences."""
    padded = fused(3, 70, 2, 32, device)
    lengths = torch.tensor([70, 0, 41], device=device)
    cu = torch.tensor([0, 70, 70, 111], device=device)
    real = (torch.arange(70, device=device) < lengths[:, None]).flatten()
    return [
        ("padded", padded, {"lengths": lengths}),
        ("packed", padded.flatten(0, 1)[real], {"cu_seqlens": cu, "max_seqlen": 70}),
    ]


@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_equals_attention_over_the_views(impl, device, layout, dropout_p):
    ((_, packed_qkv, arguments),) = [c for c in layouts(device) if c[0] == layout]
    grad = torch.randn(packed_qkv.select(-3, 0).shape, generator=torch.Generator().manual_seed(1))
    grad = grad.to(device, packed_qkv.dtype)
    results = []
    for fn in (electra_fast.attention_qkvpacked, electra_fast.attention):
        generator = torch.Generator(device).manual_seed(7)
        leaf = packed_qkv.clone().requires_grad_()
        if fn is electra_fast.attention:
            out = fn(*leaf.unbind(-3), dropout_p=dropout_p, generator=generator, **arguments)
        else:
            out = fn(leaf, dropout_p=dropout_p, generator=generator, **arguments)
        out.backward(grad)
        results.append((out, leaf.grad, generator.get_state()))
    (out, dqkv, state), (want_out, want_dqkv, want_state) = results
    torch.testing.assert_close(out, want_out)
    # dq is added with atomics on CUDA: any order, so not always the same bits
    torch.testing.assert_close(dqkv, want_dqkv)
    assert torch.equal(state, want_state)  # the same draws


def test_a_qkv_the_kernels_cannot_read_directly_gives_the_same_results(impl, device):
    """qkv laid out with the heads outermost ([B, H, L, 3, D] in memory): the kernels take copies
    of q, k and v; the output and qkv's gradient are those of a contiguous qkv."""
    contiguous = fused(2, 40, 3, 32, device)
    strided = contiguous.permute(0, 3, 1, 2, 4).contiguous().permute(0, 2, 3, 1, 4)
    assert torch.equal(strided, contiguous) and not strided.is_contiguous()
    lengths = torch.tensor([40, 17], device=device)
    grad = torch.randn(2, 40, 3, 32, generator=torch.Generator().manual_seed(2))
    grad = grad.to(device, contiguous.dtype)
    results = []
    for layout in (strided, contiguous):
        leaf = layout.detach().requires_grad_()
        out = electra_fast.attention_qkvpacked(leaf, lengths=lengths, dropout_p=0.1, seed=4)
        out.backward(grad)
        results.append((out, leaf.grad))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want)


class Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func._opname)
        return func(*args, **(kwargs or {}))


def test_the_kernels_write_the_gradient_of_qkv_without_a_stack(impl, device):
    if impl != "kernel":
        pytest.skip("the kernels' path")
    names = {}
    for fn in (electra_fast.attention_qkvpacked, electra_fast.attention):
        leaf = fused(2, 20, 2, 32, device).requires_grad_()
        parts = (leaf,) if fn is electra_fast.attention_qkvpacked else leaf.unbind(-3)
        out = fn(*parts, dropout_p=0.1, seed=3)
        with Ops() as ops:
            out.backward(torch.randn_like(out))
        names[fn.__name__] = set(ops.names)
        assert leaf.grad.shape == leaf.shape
    assert "attention_qkv_backward" in names["attention_qkvpacked"]
    assert "stack" not in names["attention_qkvpacked"]
    assert "stack" in names["attention"]  # what the packed op saves


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_opcheck(impl, device, layout):
    if impl != "kernel":
        pytest.skip("the compiled ops")
    ((_, packed_qkv, arguments),) = [c for c in layouts(device) if c[0] == layout]
    lengths, cu = arguments.get("lengths"), arguments.get("cu_seqlens")
    layout_args = (
        None if lengths is None else lengths.int(),
        None if cu is None else cu.int(),
        70,
    )
    seed = torch.tensor(3, device=device)
    args = (packed_qkv.requires_grad_(), *layout_args, seed, 0.2, 0.3)
    torch.library.opcheck(torch.ops.electra_fast.attention_qkv_forward.default, args)
    out, lse = torch.ops.electra_fast.attention_qkv_forward(*args)
    backward_args = (torch.randn_like(out), packed_qkv.detach(), out.detach(), lse, *args[1:])
    torch.library.opcheck(torch.ops.electra_fast.attention_qkv_backward.default, backward_args)


@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
def test_compile_fullgraph(impl, device, dropout_p):
    packed_qkv = fused(2, 16, 2, 32, device, dtype=torch.bfloat16)
    lengths = torch.tensor([16, 5], device=device)

    def forward(x):
        return electra_fast.attention_qkvpacked(x, lengths=lengths, dropout_p=dropout_p, seed=3)

    def run(fn):
        leaf = packed_qkv.clone().requires_grad_()
        out = fn(leaf)
        out.sum().backward()
        return out, leaf.grad

    compiled = torch.compile(forward, fullgraph=True, backend="aot_eager")
    for got, want in zip(run(compiled), run(forward), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    ("shape", "arguments", "words"),
    [
        ((2, 8, 2, 2, 32), {}, r"qkv must have shape \[B, L, 3, H, D\], got \(2, 8, 2, 2, 32\)"),
        ((8, 3, 2, 32), {}, r"qkv must have shape \[B, L, 3, H, D\]"),
        (
            (2, 8, 3, 2, 32),
            {"cu_seqlens": torch.tensor([0, 8]), "max_seqlen": 8},
            r"qkv must have shape \[T, 3, H, D\] with cu_seqlens",
        ),
    ],
)
@pytest.mark.parametrize("reference", [False, True])
def test_bad_shapes_name_qkv(monkeypatch, reference, shape, arguments, words):
    monkeypatch.setattr(_extension, "FORCE_REFERENCE", reference)
    monkeypatch.setattr(attention_module, "CPU_KERNEL_WITHOUT_DROPOUT", True)
    with pytest.raises(ValueError, match=words):
        electra_fast.attention_qkvpacked(torch.zeros(shape), **arguments)


def test_the_op_refuses_a_qkv_without_three_parts():
    if not _extension.has_kernel(OP, "cpu"):
        pytest.skip("no compiled CPU kernel in this build")
    with pytest.raises(ValueError, match=r"qkv must have shape \[B, L, 3, H, D\]"):
        torch.ops.electra_fast.attention_qkv_forward(
            torch.zeros(2, 8, 4, 2, 32), None, None, 8, None, 0.0, 0.3
        )
