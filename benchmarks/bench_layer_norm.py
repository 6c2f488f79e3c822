"""dropout_add_layer_norm against what it replaces: torch's dropout, add and layer_norm, eager and
under torch.compile, forward and forward + backward, at the end of an ELECTRA block (16,384
tokens of ELECTRA-small's 256 and ELECTRA-base's 768 on a GPU; 1,024 tokens of 256 on the CPU).
On a GPU, x is bfloat16 and the residual float32, as under autocast; on the CPU both float32.
`electra_fast_loop` (GPU only) gives our op views that start one element off 16-byte alignment,
which the row kernels refuse: it times the loop kernels, which wider rows take, on the same rows.

GB/s counts the bytes the op must move at least: forward reads x and residual and writes the
output; the backward also reads the output's gradient and x and residual again and writes the
two inputs' gradients.
"""

import pytest
import torch
import torch.nn.functional as F

from benchmarks.conftest import describe, smoke_size, synchronised
from electra_fast import _extension, dropout_add_layer_norm
from tests.ops.test_layer_norm import misaligned

P, EPS = 0.1, 1e-12


def sizes(device):
    return [(16384, 256), (16384, 768)] if device.type == "cuda" else [(1024, 256)]


def torch_path(x, residual, weight, bias):
    return F.layer_norm(residual + F.dropout(x, P), residual.shape[-1:], weight, bias, EPS)


def ours(x, residual, weight, bias):
    return dropout_add_layer_norm(x, residual, weight, bias, dropout_p=P, eps=EPS)


@pytest.mark.parametrize("mode", ["forward", "fwd+bwd"])
@pytest.mark.parametrize(
    "provider", ["electra_fast", "electra_fast_loop", "torch", "torch_compile"]
)
@pytest.mark.parametrize("size_index", [0, 1])
def test_dropout_add_layer_norm(benchmark, device, provider, mode, size_index):
    if size_index >= len(sizes(device)):
        pytest.skip("this size only on the GPU")
    if provider == "electra_fast_loop" and device.type != "cuda":
        pytest.skip("the loop kernels are CUDA kernels")
    if provider.startswith("electra_fast") and not _extension.has_kernel(
        "dropout_add_layer_norm", device.type
    ):
        pytest.skip(f"no {device.type} kernel built")
    if provider == "torch_compile" and device.type == "cpu" and benchmark.disabled:
        pytest.skip("compiling takes a while on the CPU; a smoke run leaves it out")
    rows, H = sizes(device)[size_index]
    rows = smoke_size(benchmark, rows, 64)
    x_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    place = misaligned if provider == "electra_fast_loop" else (lambda t: t)
    x = place(torch.randn(rows, H, generator=g).to(device, x_dtype)).requires_grad_()
    residual = place(torch.randn(rows, H, generator=g).to(device)).requires_grad_()
    weight = torch.ones(H, device=device, requires_grad=True)
    bias = torch.zeros(H, device=device, requires_grad=True)
    fn = {"torch": torch_path, "torch_compile": torch.compile(torch_path)}.get(provider, ours)
    grad = place(torch.randn(rows, H, device=device))

    def step():
        out = fn(x, residual, weight, bias)
        if mode == "fwd+bwd":
            torch.autograd.grad(out, (x, residual, weight, bias), grad)
        return out

    step()  # compilation, first allocations
    x_bytes, r_bytes = x.element_size(), residual.element_size()
    moved = rows * H * (x_bytes + 2 * r_bytes)
    if mode == "fwd+bwd":  # dy, x, residual read; dx, dresidual written
        moved += rows * H * (2 * x_bytes + 3 * r_bytes)
    describe(benchmark, op="dropout_add_layer_norm", provider=provider, mode=mode,
             size=f"{rows} x {H}, x {str(x_dtype)[6:]}", device=device)  # fmt: skip
    benchmark.extra_info["bytes"] = moved
    out = benchmark(synchronised(step, device))
    assert torch.isfinite(out).all()
