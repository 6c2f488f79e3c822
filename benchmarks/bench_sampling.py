"""The generator step, forward + backward, at ELECTRA's M = 2432 masked rows (batch 128 x 19
slots) and the English, Japanese and Vietnamese vocabularies, bf16:

- electra_fast: generator_step (and with inplace_backward, whose rounds each copy the logits
  first, since its backward overwrites them);
- torch_gumbel: the unfused sequence, as the official code does it: cross_entropy, uniform
  noise, two logs, argmax;
- torch_multinomial: cross_entropy, then softmax and torch.multinomial;
- memory_bound (GPU): reading two [M, V] tensors and writing one (torch.add), the traffic the
  fused step cannot avoid: the logits read in forward and backward, the gradient written.

Stage 2 (generator_step_linear) against a linear layer followed by our step or by torch_gumbel.
Peak memory is recorded on GPU.
"""

import pytest
import torch
import torch.nn.functional as F

import electra_fast
from benchmarks.conftest import describe, peak_memory_mib, smoke_size, synchronised
from electra_fast import _extension

ROWS = 2432
VOCABS = [30522, 32000, 64005]  # English WordPiece, Japanese SentencePiece, Vietnamese
STEP_PROVIDERS = ["electra_fast", "electra_fast_inplace", "torch_gumbel", "torch_multinomial"]


def step_inputs(M, V, device, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(M, V, generator=g) * 2).to(dtype).to(device)
    return logits, torch.randint(0, V, (M,), generator=g).to(device)


def torch_gumbel(logits, labels):
    loss = F.cross_entropy(logits, labels, reduction="none")
    u = torch.rand(logits.shape, device=logits.device)
    noise = -torch.log(-torch.log(u + 1e-9) + 1e-9)  # pretrain_helpers.sample_from_softmax
    return loss, torch.argmax(logits.float() + noise, dim=-1)


def torch_multinomial(logits, labels):
    loss = F.cross_entropy(logits, labels, reduction="none")
    probabilities = torch.softmax(logits.float(), dim=-1)
    return loss, torch.multinomial(probabilities, 1)[:, 0]


def step_call(provider):
    if provider.startswith("electra_fast"):
        inplace = provider.endswith("inplace")

        def ours(logits, labels):
            # Labels in range by construction: no check reading them back to the host at each
            # call (the pretraining step checks its batch's ids once, not at each op).
            out = electra_fast.generator_step(
                logits, labels, inplace_backward=inplace, check_values=False
            )
            return out.loss, out.samples

        return ours
    return {"torch_gumbel": torch_gumbel, "torch_multinomial": torch_multinomial}[provider]


@pytest.mark.parametrize("V", VOCABS)
@pytest.mark.parametrize("provider", STEP_PROVIDERS)
def test_generator_step(benchmark, device, provider, V):
    if provider.startswith("electra_fast") and not _extension.has_kernel(
        "generator_step", device.type
    ):
        pytest.skip(f"no {device.type} kernel built")
    M = smoke_size(benchmark, ROWS, 16)
    logits, labels = step_inputs(M, V, device)
    call = step_call(provider)

    inplace = provider.endswith("inplace")

    def forward_backward():
        # The step's forward and backward only, on a leaf sharing the logits' storage: no copy
        # is timed. In place, the gradient overwrites the logits, so that provider starts each
        # round from a fresh copy (a read and a write of [M, V] more than the others).
        x = (logits * 1 if inplace else logits.detach()).requires_grad_()
        loss, samples = call(x, labels)
        loss.sum().backward()
        return samples

    describe(
        benchmark,
        op="generator_step",
        provider=provider,
        mode="forward+backward",
        size=f"M={M} V={V} bf16",
        device=device,
    )
    benchmark.extra_info["peak_mib"] = peak_memory_mib(forward_backward, device)
    samples = benchmark(synchronised(forward_backward, device))
    assert samples.shape == (M,) and int(samples.max()) < V


@pytest.mark.parametrize("V", VOCABS)
def test_memory_bound(benchmark, device, V):
    """Two [M, V] reads and one write: the floor under the fused step's forward + backward."""
    if device.type != "cuda":
        pytest.skip("a bandwidth floor only means something on the GPU")
    M = smoke_size(benchmark, ROWS, 16)
    a, _ = step_inputs(M, V, device)
    b, out = a.clone(), torch.empty_like(a)
    describe(
        benchmark,
        op="generator_step",
        provider="memory_bound",
        mode="2 reads + 1 write",
        size=f"M={M} V={V} bf16",
        device=device,
    )
    benchmark(synchronised(lambda: torch.add(a, b, out=out), device))


LINEAR_PROVIDERS = ["electra_fast_linear", "linear+electra_fast", "linear+torch_gumbel"]


@pytest.mark.parametrize("E", [128, 768])  # ELECTRA-small's and -base's embedding sizes
@pytest.mark.parametrize("provider", LINEAR_PROVIDERS)
def test_generator_step_linear(benchmark, device, provider, E):
    if device.type == "cpu" and E == 768:
        pytest.skip("bf16 matmuls of base's size take seconds on the 2-core CPU")
    if "electra_fast" in provider and not _extension.has_kernel("generator_step", device.type):
        pytest.skip(f"no {device.type} kernel built")
    M, V = smoke_size(benchmark, ROWS, 16), VOCABS[0]
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(M, E, generator=g).to(torch.bfloat16).to(device)
    weight = (torch.randn(V, E, generator=g) * E**-0.5).to(torch.bfloat16).to(device)
    bias = torch.zeros(V, dtype=torch.bfloat16, device=device)
    labels = torch.randint(0, V, (M,), generator=g).to(device)
    params = [t.requires_grad_() for t in (hidden, weight, bias)]

    def forward_backward():
        for p in params:
            p.grad = None
        if provider == "electra_fast_linear":
            loss = electra_fast.generator_step_linear(*params, labels, check_values=False).loss
        else:
            logits = torch.addmm(params[2], params[0], params[1].t())
            if provider == "linear+electra_fast":
                loss = electra_fast.generator_step(
                    logits, labels, inplace_backward=True, check_values=False
                ).loss
            else:
                loss = torch_gumbel(logits, labels)[0]
        loss.sum().backward()
        return loss

    describe(
        benchmark,
        op="generator_step_linear",
        provider=provider,
        mode="forward+backward",
        size=f"M={M} V={V} E={E} bf16",
        device=device,
    )
    benchmark.extra_info["peak_mib"] = peak_memory_mib(forward_backward, device)
    loss = benchmark(synchronised(forward_backward, device))
    assert torch.isfinite(loss).all()
