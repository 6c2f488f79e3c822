"""Pretraining throughput (tokens/s of one forward + backward + optimiser step) of ELECTRA-small:
ours on the kernels (eager, under torch.compile, and on a GPU also compiled with CUDA graphs,
mode="reduce-overhead", and the loop's whole step with "cuda_graphs": true, clipping included),
ours on the torch references, and the loop
most public replications write with Hugging Face transformers (ElectraForMaskedLM +
ElectraForPreTraining, BERT-style masking, full-vocabulary logits, Gumbel noise and argmax in
plain torch), eager and compiled.

GPU: batch 128 at length 128 and batch 32 at length 512. CPU: the same lengths at batch 8 and 2
(a full batch takes seconds per step on two cores). tokens/s = B * L / p50 (all positions
real).

Why the compiled rows matter on a GPU: an eager step of ELECTRA-small calls about 2,500 aten and
electra_fast ops, 880 of them more than views (`python benchmarks/count_step_ops.py`, on the
CPU, at any batch size), each a kernel launch or at least a trip through the dispatcher on the
host. At the 3M tokens/s the issue asks for, a step of 128 x 128 tokens has 5.5 ms; the host may
not issue that many ops in that time, whatever the kernels' speed. benchmarks/bench_step_host.py
times that host share on its own.
"""

import pytest
import torch
import torch.nn.functional as F

from benchmarks.conftest import describe, smoke_size, synchronised
from electra_fast import _extension, amp
from electra_fast.model import ElectraConfig, ElectraForPretraining
from electra_fast.model.pretraining import draw_keys
from electra_fast.pretraining.optimization import AdamWeightDecay, parameter_groups
from electra_fast.pretraining.skipping import SkipCounter
from electra_fast.pretraining.step import GraphedStep, TrainStep

VOCAB, MASK, SPECIALS = 30522, 103, (0, 100, 101, 102)
# In the order they run: what the targets compare first (the loop's step replayed from
# graphs and eager, the transformers loop eager and compiled), then the rest; on the first GPU
# run the file stopped at electra_fast_compile, before the transformers rows ran.
PROVIDERS = [
    "electra_fast_graphed_step",
    "electra_fast",
    "hf_eager",
    "hf_compile",
    "electra_fast_reference",
    "electra_fast_compile",
    "electra_fast_cudagraphs",
]


def sizes(device):
    return [(128, 128), (32, 512)] if device.type == "cuda" else [(8, 128), (2, 512)]


def hf_models(config: ElectraConfig, device):
    transformers = pytest.importorskip("transformers")

    def hf_config(c):
        return transformers.ElectraConfig(
            vocab_size=c.vocab_size, embedding_size=c.embedding_size, hidden_size=c.hidden_size,
            num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
            intermediate_size=c.intermediate_size,
        )  # fmt: skip

    generator = transformers.ElectraForMaskedLM(hf_config(config.generator_config())).to(device)
    discriminator = transformers.ElectraForPreTraining(hf_config(config)).to(device)
    discriminator.electra.embeddings = generator.electra.embeddings  # shared, as officially
    return generator, discriminator


def hf_step(generator, discriminator, ids, mask):
    """The usual replication: BERT-style masking, logits over the vocabulary at every
    position, cross-entropy, Gumbel-max sampling, the discriminator on the corrupted ids."""
    special = torch.isin(ids, torch.tensor(SPECIALS, device=ids.device))
    masked = (torch.rand(ids.shape, device=ids.device) < 0.15) & ~special & mask.bool()
    labels = torch.where(masked, ids, -100)
    inputs = torch.where(masked, MASK, ids)
    logits = generator(input_ids=inputs, attention_mask=mask).logits
    gen_loss = F.cross_entropy(logits.flatten(0, 1), labels.view(-1), ignore_index=-100)
    with torch.no_grad():
        u = torch.rand(logits.shape, device=ids.device)
        sampled = (logits.float() - torch.log(-torch.log(u + 1e-9) + 1e-9)).argmax(-1)
    corrupted = torch.where(masked, sampled, ids)
    disc_labels = (corrupted != ids).float()
    disc_logits = discriminator(input_ids=corrupted, attention_mask=mask).logits
    disc_loss = F.binary_cross_entropy_with_logits(disc_logits, disc_labels)
    return gen_loss + 50.0 * disc_loss


def loop_step(model, ids, mask, device, graphs=False):
    """The pretraining loop's step (TrainStep; with graphs, in a GraphedStep as "cuda_graphs":
    true does): forward with the keys drawn outside and the batch not re-checked, backward, the
    global norm, the skip flag and the clipping Adam update, bf16 on a GPU. Returns a function
    of no arguments that runs a step and returns its loss."""
    optimizer = AdamWeightDecay(parameter_groups(model, 0.01), lr=1e-4)
    precision = "bf16" if device.type == "cuda" else "fp32"
    step = TrainStep(model, optimizer, SkipCounter(device, limit=10), max_grad_norm=1.0,
                     autocast=amp.autocast(precision, device, cache=not graphs))  # fmt: skip
    runner = GraphedStep(step) if graphs else step
    keys = torch.Generator(device).manual_seed(0)
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}

    def train_step():
        runner.micro(batch, draw_keys(device, keys), metrics=False)
        runner.set_learning_rate(1e-4)
        runner.update()
        return step.reported[0]

    return train_step


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("size_index", [0, 1])
def test_pretraining_step(benchmark, monkeypatch, device, provider, size_index):
    if size_index >= len(sizes(device)):
        pytest.skip("no such size")
    kernels = provider.startswith("electra_fast") and provider != "electra_fast_reference"
    graphs = provider in ("electra_fast_cudagraphs", "electra_fast_graphed_step")
    if graphs and device.type != "cuda":
        pytest.skip("CUDA graphs need a GPU")
    if kernels and not _extension.has_kernel("generator_step", device.type):
        pytest.skip(f"no {device.type} kernels built")
    if provider.endswith("_compile") and device.type == "cpu" and benchmark.disabled:
        pytest.skip("compiling takes minutes on the CPU; a smoke run leaves it out")
    monkeypatch.setattr(_extension, "FORCE_REFERENCE", provider == "electra_fast_reference")
    B, L = sizes(device)[size_index]
    B = smoke_size(benchmark, B, 2)
    config = ElectraConfig.preset("small", vocab_size=VOCAB, mask_token_id=MASK,
                                  special_token_ids=SPECIALS)  # fmt: skip
    torch.manual_seed(0)
    ids = torch.randint(1000, VOCAB, (B, L), device=device)
    ids[:, 0], ids[:, -1] = 101, 102
    mask = torch.ones_like(ids)
    mode, warmup = "fwd+bwd+adam", 3 if graphs else 1  # compilation, graph recording
    if provider == "electra_fast_graphed_step":
        model = ElectraForPretraining(config).to(device)
        train_step = loop_step(model, ids, mask, device, graphs=True)
        mode, warmup = "fwd+bwd+clip+adam", GraphedStep.WARMUP + 1  # eager runs, recording
    else:
        train_step = plain_step(provider, config, ids, mask, device)
    for _ in range(warmup):
        train_step()
    describe(benchmark, op="pretraining_step", provider=provider, mode=mode,
             size=f"ELECTRA-small B={B} L={L}", device=device)  # fmt: skip
    benchmark.extra_info["tokens_per_step"] = B * L
    loss = benchmark(synchronised(train_step, device))
    assert torch.isfinite(loss)


def plain_step(provider, config, ids, mask, device):
    """forward, backward and Adam (no clipping) of ours or of the transformers loop, eager or
    under torch.compile: a function of no arguments that runs a step and returns its loss."""
    cudagraphs = provider == "electra_fast_cudagraphs"
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else None
    if provider.startswith("electra_fast"):
        model = ElectraForPretraining(config).to(device)
        parameters = list(model.parameters())
        forward = model
        if provider == "electra_fast_compile":
            forward = torch.compile(model)
        elif cudagraphs:  # the step replayed as CUDA graphs: no launch cost per kernel
            forward = torch.compile(model, mode="reduce-overhead")
        keys = torch.Generator(device).manual_seed(0)

        def loss_fn():  # as the trainer calls it: keys drawn outside, the batch checked once
            return forward(ids, mask, keys=draw_keys(device, keys), metrics=False,
                           check_values=False).loss  # fmt: skip
    else:
        generator, discriminator = hf_models(config, device)
        parameters = list({id(p): p for m in (generator, discriminator)
                           for p in m.parameters()}.values())  # fmt: skip
        step = hf_step
        if provider == "hf_compile":
            step = torch.compile(hf_step)

        def loss_fn():
            return step(generator, discriminator, ids, mask)

    optimizer = AdamWeightDecay(parameters, lr=1e-4)

    def train_step():
        if cudagraphs:  # a new step: the graphs may overwrite the previous step's outputs
            torch.compiler.cudagraph_mark_step_begin()
        with autocast or torch.autocast("cpu", enabled=False):
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return train_step
