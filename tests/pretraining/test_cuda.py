"""The pretraining loop on a GPU (skipped without one): bf16 autocast, and fp16 with loss
scaling, run every step on our CUDA kernels (masking, the generator step, attention forward
and backward, seen in the profiler), the loss falls and the run exports."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from electra_fast import ElectraDiscriminator, _extension
from electra_fast.pretraining.trainer import pretrain
from tests.pretraining.test_trainer import dataset, hparams, metrics  # noqa: F401  (fixture)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_loss_falls_on_our_kernels(dataset, tmp_path, precision):  # noqa: F811
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        summary = pretrain(dataset, tmp_path / "run", hparams(precision=precision),
                           progress=False, device="cuda")  # fmt: skip
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


def test_a_training_step_never_makes_the_host_wait():
    """Forward, backward, clipping, the skip decision and the update, as the loop runs them,
    under CUDA's sync debug mode: any read of a device value on the host is an error."""
    from electra_fast.model import ElectraForPretraining
    from electra_fast.model.pretraining import draw_keys
    from electra_fast.pretraining.optimization import AdamWeightDecay
    from electra_fast.pretraining.skipping import SkipCounter
    from electra_fast.pretraining.trainer import clipped_update
    from tests.model.test_pretraining import batch, tiny

    model = ElectraForPretraining(tiny(generator_hidden_size=0.5)).cuda()
    optimizer = AdamWeightDecay(model.parameters(), lr=1e-3)
    skips = SkipCounter(torch.device("cuda"), limit=10)
    ids, mask = (t.cuda() for t in batch(B=3, L=16))

    def step(number):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(ids, mask, keys=draw_keys("cuda"), metrics=False, check_values=False)
        out.loss.backward()
        clipped_update(optimizer, skips, out.loss.detach(), 1.0)
        optimizer.zero_grad(set_to_none=True)
        skips.poll(number)

    step(1)  # the first step allocates the moments and loads what it needs
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for number in range(2, 5):
            step(number)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert skips.check(4) == 0


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
