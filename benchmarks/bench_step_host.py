"""The host's share of an eager pretraining step: ELECTRA-small's structure (12 discriminator and
12 generator layers, the same ops and as many) at a width of 64 and a batch of one sequence of
16 tokens, where the arithmetic is next to nothing and the time is Python, the dispatcher and, on
a GPU, kernel launches. On a GPU this is the floor under an eager step of ELECTRA-small at any
batch: at the 3M tokens/s the issue asks for, a 128 x 128 step has 5.5 ms.

The vocabulary is ELECTRA-small's 30,522 words on a GPU. On the CPU it is 512: the passes over a
[30522, 64] embedding matrix (its gradient, Adam, the norm) would take most of the time there,
and one vocabulary tile instead of 8 leaves out about 50 of the step's 1,200 ops that are not
views (`benchmarks/count_step_ops.py` counts them at full size).

`electra_fast` runs the pretraining loop's step: forward with the keys drawn outside and the
batch not re-checked, backward, `grad_norm`, the skip flag, the fused update that clips, and
`zero_grad` (`TrainStep`); `electra_fast_graphs` the same step replayed from CUDA graphs
(`GraphedStep`, `"cuda_graphs": true`), whose host share is a few copies and launches.
`hf_eager` is the usual replication's step (benchmarks/bench_pretraining.py's `hf_step`) with
`clip_grad_norm_` and torch's AdamW as such loops create it.

    pytest benchmarks/bench_step_host.py --benchmark-json out.json
"""

import pytest
import torch

from benchmarks.bench_pretraining import MASK, SPECIALS, VOCAB, hf_models, hf_step, loop_step
from benchmarks.conftest import describe, synchronised
from electra_fast import _extension
from electra_fast.model import ElectraConfig, ElectraForPretraining
from electra_fast.pretraining.step import GraphedStep

B, L = 1, 16


def narrow_config(vocab_size: int) -> ElectraConfig:
    """ELECTRA-small's depth and head dimension (64) at a width of 64, for the generator too:
    ELECTRA-small's generator is 64 wide (one head of 64). A generator of a quarter of this width
    would have heads of 16, for which no CUDA attention kernel is built: its attention would run
    on the plain-torch reference, dozens of ops per call, which is not ELECTRA-small's step (the
    first H100 reading of this benchmark, 139 ms eager, was taken so)."""
    return ElectraConfig.preset("small", vocab_size=vocab_size, mask_token_id=MASK,
                                special_token_ids=SPECIALS, hidden_size=64, embedding_size=64,
                                num_attention_heads=1, intermediate_size=256,
                                generator_hidden_size=1.0)  # fmt: skip


def hf_eager_step(config: ElectraConfig, ids, mask, device):
    generator, discriminator = hf_models(config, device)
    parameters = list({id(p): p for m in (generator, discriminator)
                       for p in m.parameters()}.values())  # fmt: skip
    optimizer = torch.optim.AdamW(parameters, lr=1e-4, eps=1e-6)
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with autocast:
            loss = hf_step(generator, discriminator, ids, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


@pytest.mark.parametrize("provider", ["electra_fast", "electra_fast_graphs", "hf_eager"])
def test_step_host_time(benchmark, device, provider):
    if provider.startswith("electra_fast") and not _extension.has_kernel(
        "generator_step", device.type
    ):
        pytest.skip(f"no {device.type} kernels built")
    graphs = provider == "electra_fast_graphs"
    if graphs and device.type != "cuda":
        pytest.skip("CUDA graphs need a GPU")
    vocab = VOCAB if device.type == "cuda" else 512
    torch.manual_seed(0)
    ids = torch.randint(110, vocab, (B, L), device=device)
    ids[:, 0], ids[:, -1] = 101, 102
    mask = torch.ones_like(ids)
    config = narrow_config(vocab)
    if provider == "hf_eager":
        make = hf_eager_step(config, ids, mask, device)
    else:
        make = loop_step(ElectraForPretraining(config).to(device), ids, mask, device, graphs)
    step = synchronised(make, device)
    for _ in range(GraphedStep.WARMUP + 1):  # moments allocated, caches warm, graphs recorded
        step()
    describe(benchmark, op="step_host_time", provider=provider, mode="fwd+bwd+clip+adam",
             size=f"ELECTRA-small's layers at width 64, V={vocab}, B={B} L={L}",
             device=device)  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the host's own time: no thread pool waking up for tiny ops
    try:
        loss = benchmark(step)
    finally:
        torch.set_num_threads(threads)
    assert torch.isfinite(loss)
