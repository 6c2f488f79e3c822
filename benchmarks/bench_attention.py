"""Encoder attention at B * L = 16,384 tokens, L in {128, 512}, D = 64, H in {4, 12}, bf16, forward
and forward + backward, without padding and with realistic padding (lengths uniform in
[L/4, L]):

- electra_fast: attention(q, k, v, lengths=...), the flash kernel on the GPU (the sm80 one);
- electra_fast_wgmma: the same with ELECTRA_FAST_WGMMA=1, the sm_90a forward and backward
  (H100/H200 only);
- sdpa_default: torch's scaled_dot_product_attention as it dispatches by default (with a padding
  mask: cuDNN or the memory-efficient kernel);
- sdpa_flash_unmasked: SDPA's flash backend without a mask: it computes the padded keys too and
  gives padded sequences the wrong answer, the speed torch reaches when padding is ignored;
- sdpa_math: SDPA's math path with the mask.
With dropout 0.1 (pretraining), forward + backward with padding: electra_fast and sdpa_default.
And as the encoder calls it, from one fused projection output qkv [B, L, 3, H, D], forward +
backward with padding and dropout 0.1 (test_attention_from_projection): electra_fast over the
unbound views (autograd stacks the three gradients), electra_fast_qkvpacked (one gradient,
written by the kernels) and sdpa_default over the views.

Each call is made as an encoder layer makes it: the lengths are checked, and SDPA's mask built,
once per batch outside the timed call.

Each row records the useful work (FLOPs of the unpadded sequences: 4 * sum(len^2) * H * D in the
forward, 2.5 times that in the backward) and the least HBM traffic (q, k, v read and out written;
the backward also reads out and dO and writes dq, dk, dv), so report.py prints TFLOP/s and the
share of the copy bandwidth measured by test_hbm_copy.

On the CPU the matrix only runs untimed (`--benchmark-disable`, as `make test` does); what is
timed there is test_cpu_paths: the CPU twin of the kernels against the torch path, in fp32.
"""

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import electra_fast
from benchmarks.conftest import describe, peak_memory_mib, synchronised
from electra_fast import _extension

TOKENS = 16384
D = 64
SHAPES = [(128, 4), (128, 12), (512, 4), (512, 12)]  # (L, H)
PROVIDERS = [
    "electra_fast",
    "electra_fast_wgmma",
    "sdpa_default",
    "sdpa_flash_unmasked",
    "sdpa_math",
]


def make_inputs(L, H, padded, device, *, dtype=torch.bfloat16, tokens=TOKENS):
    g = torch.Generator().manual_seed(0)
    B = max(1, tokens // L)
    q, k, v = (torch.randn(B, L, H, D, generator=g).to(dtype).to(device) for _ in range(3))
    lengths = None
    if padded:
        lengths = torch.randint(L // 4, L + 1, (B,), generator=g, dtype=torch.int32).to(device)
    return q, k, v, lengths


def attention_call(provider, lengths, dropout_p, L):
    """One call as an encoder layer makes it: the lengths are checked (or the SDPA mask built)
    once per batch, outside the call, since every layer of the encoder reuses them. A check of
    the lengths' values inside the call would read them back to the host at each call (on the
    first H100 run, with that synchronisation, a padded call took longer than a full one)."""
    mask = None
    if lengths is not None and provider.startswith("sdpa") and provider != "sdpa_flash_unmasked":
        mask = (torch.arange(L, device=lengths.device) < lengths[:, None])[:, None, None, :]

    def sdpa(q, k, v, mask):
        out = F.scaled_dot_product_attention(
            *(t.transpose(1, 2) for t in (q, k, v)), attn_mask=mask, dropout_p=dropout_p
        )
        return out.transpose(1, 2)

    def call(q, k, v):
        if provider.startswith("electra_fast"):
            return electra_fast.attention(
                q, k, v, lengths=lengths, dropout_p=dropout_p, check_values=False
            )
        if provider == "sdpa_default":
            return sdpa(q, k, v, mask)
        backend = {"sdpa_flash_unmasked": SDPBackend.FLASH_ATTENTION, "sdpa_math": SDPBackend.MATH}
        with sdpa_kernel(backend[provider]):
            return sdpa(q, k, v, mask)

    return call


def useful_work(q, lengths, backward):
    """(FLOPs over the real tokens, least HBM bytes) of one call."""
    B, L, H, _ = q.shape
    lens = torch.full((B,), L) if lengths is None else lengths.cpu().long()
    flops = 4 * int((lens**2).sum()) * H * D * (3.5 if backward else 1.0)
    tensors_moved = 12 if backward else 4  # [T, H, D] reads and writes
    return flops, tensors_moved * int(lens.sum()) * H * D * q.element_size()


def choose_forward(provider, device, monkeypatch):
    """The wgmma kernels for electra_fast_wgmma (skipped where there are none), else the sm80."""
    if provider != "electra_fast_wgmma":
        monkeypatch.setenv("ELECTRA_FAST_WGMMA", "0")
        return
    hopper = device.type == "cuda" and torch.cuda.get_device_capability(device) == (9, 0)
    if not (hopper and _extension.sm90a_kernels_built()):
        pytest.skip("the wgmma kernels need an H100/H200 and a build with sm_90a kernels")
    monkeypatch.setenv("ELECTRA_FAST_WGMMA", "1")


def run_case(benchmark, monkeypatch, device, provider, L, H, padded, mode, dropout_p):
    if device.type == "cpu" and not benchmark.disabled:
        pytest.skip("a GPU benchmark; test_cpu_paths times the CPU")
    choose_forward(provider, device, monkeypatch)
    small = benchmark.disabled  # smoke run: a few short sequences
    q, k, v, lengths = make_inputs(
        min(L, 40) if small else L, H, padded, device, tokens=80 if small else TOKENS
    )
    backward = mode == "forward+backward"
    call = attention_call(provider, lengths, dropout_p, q.shape[1])
    leaves = [t.requires_grad_(backward) for t in (q, k, v)]
    grad = torch.randn_like(q)

    def run():
        for t in leaves:
            t.grad = None
        out = call(*leaves)
        if backward:
            out.backward(grad)
        return out

    describe(
        benchmark,
        op="attention",
        provider=provider,
        mode=mode + (f" dropout {dropout_p}" if dropout_p else ""),
        size=f"B={q.shape[0]} L={q.shape[1]} H={H} D={D} {'padded' if padded else 'full'} bf16",
        device=device,
    )
    flops, moved = useful_work(q, lengths, backward)
    benchmark.extra_info.update(flops=flops, bytes=moved)
    benchmark.extra_info["peak_mib"] = peak_memory_mib(run, device)
    out = benchmark(synchronised(run, device))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize(("L", "H"), SHAPES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_attention(benchmark, monkeypatch, device, provider, L, H, padded, mode):
    run_case(benchmark, monkeypatch, device, provider, L, H, padded, mode, 0.0)


@pytest.mark.parametrize(("L", "H"), SHAPES)
@pytest.mark.parametrize("provider", ["electra_fast", "electra_fast_wgmma", "sdpa_default"])
def test_attention_dropout(benchmark, monkeypatch, device, provider, L, H):
    run_case(benchmark, monkeypatch, device, provider, L, H, True, "forward+backward", 0.1)


@pytest.mark.parametrize(("L", "H"), SHAPES)
@pytest.mark.parametrize("provider", ["electra_fast", "electra_fast_qkvpacked", "sdpa_default"])
def test_attention_from_projection(benchmark, monkeypatch, device, provider, L, H):
    if device.type == "cpu" and not benchmark.disabled:
        pytest.skip("a GPU benchmark; test_cpu_paths times the CPU")
    choose_forward("electra_fast", device, monkeypatch)
    small = benchmark.disabled
    L = min(L, 40) if small else L
    q, k, v, lengths = make_inputs(L, H, True, device, tokens=80 if small else TOKENS)
    qkv = torch.stack((q, k, v), dim=2).requires_grad_()
    grad = torch.randn_like(q)
    call = attention_call("sdpa_default" if provider == "sdpa_default" else "electra_fast",
                          lengths, 0.1, L)  # fmt: skip

    def run():
        qkv.grad = None
        if provider == "electra_fast_qkvpacked":
            out = electra_fast.attention_qkvpacked(
                qkv, lengths=lengths, dropout_p=0.1, check_values=False
            )
        else:
            out = call(*qkv.unbind(2))
        out.backward(grad)
        return out

    describe(benchmark, op="attention", provider=provider,
             mode="forward+backward dropout 0.1, from qkv",
             size=f"B={q.shape[0]} L={L} H={H} D={D} padded bf16", device=device)  # fmt: skip
    flops, moved = useful_work(q, lengths, True)
    benchmark.extra_info.update(flops=flops, bytes=moved)
    benchmark.extra_info["peak_mib"] = peak_memory_mib(run, device)
    out = benchmark(synchronised(run, device))
    assert torch.isfinite(out).all()


def test_hbm_copy(benchmark, device):
    """A 1 GiB device-to-device copy: the bandwidth the other rows' GB/s are a share of."""
    if device.type != "cuda":
        pytest.skip("HBM bandwidth only means something on the GPU")
    src = torch.empty(2**29, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    describe(benchmark, op="hbm", provider="copy", mode="read + write", size="1 GiB", device=device)
    benchmark.extra_info.update(flops=0, bytes=2 * src.numel() * src.element_size())
    benchmark(synchronised(lambda: dst.copy_(src), device))


@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
@pytest.mark.parametrize("provider", ["twin", "torch"])
def test_cpu_paths(benchmark, monkeypatch, provider, dropout_p):
    """fp32 on the CPU, forward + backward, B=8 L=128 H=4 (ELECTRA-small), padded: the CPU twin
    of the kernels (forced even without dropout) against the torch path (SDPA without dropout,
    the plain-torch reference with it). This is what chose the CPU's default."""
    if provider == "twin" and not _extension.has_kernel("attention_forward", "cpu"):
        pytest.skip("no CPU kernel built")
    module = importlib.import_module("electra_fast.ops.attention")
    monkeypatch.setattr(_extension, "FORCE_REFERENCE", provider == "torch")
    monkeypatch.setattr(module, "CPU_KERNEL_WITHOUT_DROPOUT", True)
    device = torch.device("cpu")
    q, k, v, lengths = make_inputs(128, 4, True, device, dtype=torch.float32, tokens=1024)
    leaves = [t.requires_grad_() for t in (q, k, v)]

    def run():
        for t in leaves:
            t.grad = None
        out = electra_fast.attention(*leaves, lengths=lengths, dropout_p=dropout_p)
        out.sum().backward()
        return out

    describe(
        benchmark,
        op="attention_cpu",
        provider=provider,
        mode=f"forward+backward dropout {dropout_p}",
        size="B=8 L=128 H=4 D=64 padded fp32",
        device=device,
    )
    assert torch.isfinite(benchmark(run)).all()
