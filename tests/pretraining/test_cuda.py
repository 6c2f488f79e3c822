"""The pretraining loop on a GPU (skipped without one): bf16 autocast, fp16 with loss scaling,
and both replayed from CUDA graphs (also with gradient checkpointing) run every step on our CUDA
kernels (masking, the generator step, attention forward and backward, seen in the profiler), the
loss falls and the run exports; the step never makes the host wait; a replayed step trains as
the eager one; gradient checkpointing lowers the peak memory of a step."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from electra_fast import ElectraDiscriminator, _extension, amp
from electra_fast.pretraining.trainer import pretrain
from tests.pretraining.test_trainer import dataset, hparams, metrics  # noqa: F401  (fixture)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize(
    ("precision", "cuda_graphs", "recompute"),
    [("bf16", False, False), ("fp16", False, False), ("bf16", True, False), ("fp16", True, False),
     ("bf16", True, True)],
)  # fmt: skip
def test_the_loss_falls_on_our_kernels(dataset, tmp_path, precision, cuda_graphs, recompute):  # noqa: F811
    settings = hparams(precision=precision, cuda_graphs=cuda_graphs,
                       gradient_checkpointing=recompute)  # fmt: skip
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        summary = pretrain(dataset, tmp_path / "run", settings, progress=False, device="cuda")
    # fp16's loss scale starts high and halves at each overflow, which counts as a skipped step.
    assert summary["finished"] and (summary["skipped"] == 0 or precision == "fp16"), summary
    records = metrics(tmp_path / "run")
    assert records[-1]["loss"] < 0.7 * records[0]["loss"], (records[0], records[-1])
    assert ElectraDiscriminator.from_pretrained(tmp_path / "run" / "export" / "discriminator")
    if not all(_extension.has_kernel(op, "cuda") for op in _extension.OP_NAMES):
        pytest.skip("the loss fell, on the references: this build has no CUDA kernels")
    ran = {event.key for event in trace.key_averages()}
    wanted = {"mask_tokens", "attention_forward", "attention_backward", "dropout_add_layer_norm",
              "dropout_add_layer_norm_backward"}  # fmt: skip
    missing = {op for op in wanted if f"electra_fast::{op}" not in ran}
    assert not missing, f"these steps ran on the references: {sorted(missing)}"
    assert {"electra_fast::generator_step", "electra_fast::generator_step_tile"} & ran


def cuda_step(graphs: bool = False):
    """A tiny model (seeded alike each time) and its TrainStep under bf16 autocast, in a
    GraphedStep with `graphs`."""
    from electra_fast.model import ElectraForPretraining
    from electra_fast.pretraining.step import GraphedStep
    from tests.model.test_pretraining import tiny
    from tests.pretraining.test_step import train_step

    torch.manual_seed(0)
    model = ElectraForPretraining(tiny()).cuda()
    autocast = amp.autocast("bf16", torch.device("cuda"), cache=not graphs)
    step = train_step(model, 1.0, autocast=autocast)
    return model, (GraphedStep(step) if graphs else step)


def test_a_training_step_never_makes_the_host_wait():
    """Forward, backward, clipping, the skip decision and the update, as the loop runs them
    (TrainStep), under CUDA's sync debug mode: any read of a device value on the host is an
    error."""
    from tests.pretraining.test_step import micro_batches

    _, step = cuda_step()
    inputs, keys = micro_batches(1, "cuda")[0]
    inputs = {k: v.cuda() for k, v in inputs.items()}

    def one(number):
        step.micro(inputs, keys, metrics=False)
        step.set_learning_rate(1e-3)
        step.update()
        step.skips.poll(number)

    one(1)  # the first step allocates the moments and loads what it needs
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for number in range(2, 5):
            one(number)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert step.skips.check(4) == 0


def test_graph_replays_train_as_the_eager_step():
    """GraphedStep: 3 eager runs of each part, then recorded and replayed. The losses and the
    parameters follow the eager TrainStep's from the same start, up to a few ulps a step."""
    from electra_fast.pretraining.step import GraphedStep
    from tests.pretraining.test_graphs import train

    eager_model, eager = cuda_step(graphs=False)
    graphed_model, graphed = cuda_step(graphs=True)
    steps = 2 * GraphedStep.WARMUP + 4
    eager_losses = [r["loss"] for r in train(eager, steps, device="cuda")]
    graphed_losses = [r["loss"] for r in train(graphed, steps, device="cuda")]
    assert set(graphed.graphs) == {("step", True), ("step", False)}  # one micro-batch a step
    torch.testing.assert_close(graphed_losses, eager_losses, rtol=1e-3, atol=1e-4)
    for (name, a), b in zip(graphed_model.named_parameters(), eager_model.parameters(),
                            strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4, msg=name)


def test_a_replayed_step_launches_a_few_kernels_from_the_host():
    """Once recorded, a step costs the host the batch's and the keys' copies, the learning
    rate's fill and one graph launch, where the eager step launches hundreds of kernels."""
    from electra_fast.pretraining.step import GraphedStep
    from tests.pretraining.test_graphs import train

    def launches(graphs):
        _, runner = cuda_step(graphs=graphs)
        train(runner, 2 * GraphedStep.WARMUP + 2, device="cuda")  # every part recorded
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as trace:
            train(runner, 2, first=100, device="cuda")
        # The runtime calls that launch one kernel (cudaLaunchKernel, cudaLaunchKernelExC,
        # cuLaunchKernel...), not a graph's cudaGraphLaunch.
        return sum(e.count for e in trace.key_averages() if "LaunchKernel" in e.key)

    eager, graphed = launches(False), launches(True)
    assert graphed <= 20 < 200 <= eager, (graphed, eager)


def test_the_loop_waits_for_the_device_no_more_often_for_more_steps(dataset, tmp_path):  # noqa: F811
    """The waits that remain are per run (start, the first log record, the last checkpoint,
    the export), not per step."""
    import warnings

    def waits(steps):
        settings = hparams(num_train_steps=steps, iterations_per_loop=1000)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                pretrain(dataset, tmp_path / f"run{steps}", settings, progress=False,
                         device="cuda")  # fmt: skip
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    waits(4)  # warm-up: first-time loads and allocations
    assert waits(8) == waits(16)


def test_gradient_checkpointing_lowers_the_peak_memory():
    """One bf16 forward and backward of ELECTRA-small at 32 x 128: keeping only the layers'
    inputs must take well under the memory of keeping all their activations."""
    from electra_fast.model import ElectraConfig, ElectraForPretraining, set_gradient_checkpointing

    config = ElectraConfig.preset("small", vocab_size=30522)
    torch.manual_seed(0)
    model = ElectraForPretraining(config).cuda()
    ids = torch.randint(1000, 30522, (32, 128), device="cuda")
    ids[:, 0] = 101
    mask = torch.ones_like(ids)

    def peak(recompute: bool) -> int:
        set_gradient_checkpointing(model, recompute)
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        with amp.autocast("bf16", torch.device("cuda"))():
            loss = model(ids, mask, torch.zeros_like(ids)).loss
        loss.backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()

    peak(False)  # first allocations (cuBLAS workspaces, the gradients) out of the comparison
    plain, recomputed = peak(False), peak(True)
    assert recomputed < 0.7 * plain, (recomputed, plain)
