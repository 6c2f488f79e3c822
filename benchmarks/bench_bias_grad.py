"""A linear layer's bias gradient, the column sums of its output's gradient dY [M, N], five ways:
torch's reduction (`dY.sum(0)`, what autograd's addmm backward runs), the same written in fp32
(`dY.sum(0, dtype=torch.float32)`, what the model's linear layers ran before column_sums), the
same after a cast (`dY.float().sum(0)`), a matrix product with a row of ones (`ones[1, M] @ dY`,
cuBLAS with fp32 accumulation), and our column_sums op (what the model's linear layers use).
In the H100 profile of an ELECTRA-small step (benchmarks/results/2026-11-24_h100.md) the 100
bf16 bias-gradient reductions took 2.3 ms of the step's 18.4, about 23 us each for at most
16,384 x 1,024 elements that HBM reads in 11 us.

The second benchmark is what the model does instead for its feed-forward layers: bias_gelu's
forward and backward, which returns the bias gradient from the fp32 values of its own backward,
against torch's gelu of the biased input followed by the reduction.

Sizes: the 16,384 tokens of a 128 x 128 batch at ELECTRA-small's widths (256, 768 for the fused
query, key and value, and 1,024 for the feed-forward), bf16 on a GPU; 1,024 tokens in fp32 and bf16
on the CPU.
"""

import pytest
import torch
import torch.nn.functional as F

from benchmarks.conftest import describe, smoke_size, synchronised
from electra_fast import bias_gelu, column_sums

WIDTHS = [256, 768, 1024]


def bias_grad_of(provider: str):
    if provider == "torch_sum":
        return lambda dy, ones: dy.sum(0)
    if provider == "torch_sum_to_fp32":
        return lambda dy, ones: dy.sum(0, dtype=torch.float32)
    if provider == "torch_sum_fp32":
        return lambda dy, ones: dy.float().sum(0)
    if provider == "electra_fast":
        return lambda dy, ones: column_sums(dy)
    return lambda dy, ones: (ones @ dy)[0]


@pytest.mark.parametrize(
    "provider", ["electra_fast", "torch_sum", "torch_sum_to_fp32", "torch_sum_fp32", "matmul_ones"]
)
@pytest.mark.parametrize("N", WIDTHS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_bias_grad(benchmark, device, provider, N, dtype):
    """bf16 on a GPU; on the CPU float32 (its default precision) and bf16 (its autocast's)."""
    if device.type == "cuda" and dtype == torch.float32:
        pytest.skip("bf16 only on a GPU, as autocast runs the step there")
    M = smoke_size(benchmark, 16384 if device.type == "cuda" else 1024, 64)
    g = torch.Generator().manual_seed(0)
    dy = torch.randn(M, N, generator=g).to(device, dtype)
    ones = torch.ones(1, M, device=device, dtype=dtype)
    fn = bias_grad_of(provider)
    fn(dy, ones)  # cuBLAS handle, first allocations
    describe(benchmark, op="bias_grad", provider=provider, mode="forward",
             size=f"{M} x {N}, {str(dtype)[6:]}", device=device)  # fmt: skip
    benchmark.extra_info["bytes"] = dy.numel() * dy.element_size()
    out = benchmark(synchronised(lambda: fn(dy, ones), device))
    want = dy.double().sum(0)
    # bf16 output: its rounding (2^-8 relative) on sums of M terms of size 1
    torch.testing.assert_close(out.double(), want, rtol=1e-2, atol=1e-2 * M**0.5)


@pytest.mark.parametrize("provider", ["torch", "electra_fast"])
@pytest.mark.parametrize("N", WIDTHS)
def test_gelu_with_bias(benchmark, device, provider, N):
    """Forward and backward: gelu(h + b), the gradients of h and b."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    M = smoke_size(benchmark, 16384 if device.type == "cuda" else 1024, 64)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(M, N, generator=g).to(device, dtype).requires_grad_()
    b = torch.randn(N, generator=g).to(device).requires_grad_()
    dy = torch.randn(M, N, generator=g).to(device, dtype)

    biased = (h + b.to(dtype)).detach().requires_grad_()  # nn.Linear adds it in its matmul

    def torch_path():  # what nn.Linear + F.gelu leave to do: gelu, its backward, the reduction
        (dh,) = torch.autograd.grad(F.gelu(biased), biased, dy)
        return dh, dh.sum(0)

    def ours():
        return torch.autograd.grad(bias_gelu(h, b), (h, b), dy)

    fn = torch_path if provider == "torch" else ours
    fn()
    describe(benchmark, op="gelu_with_bias", provider=provider, mode="forward+backward",
             size=f"{M} x {N}, {str(dtype)[6:]}", device=device)  # fmt: skip
    benchmark.extra_info["bytes"] = 4 * h.numel() * h.element_size()  # h, y, dy, dh
    dh, db = benchmark(synchronised(fn, device))
    exact = (h.detach().double() + b.detach().double()).requires_grad_()
    (want,) = torch.autograd.grad(F.gelu(exact), exact, dy.double())
    torch.testing.assert_close(dh.double(), want, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(db.double(), want.sum(0), rtol=1e-2, atol=1e-2 * M**0.5)
