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
    wanted = {"mask_tokens", "attention_forward", "attention_backward"}
    missing = {op for op in wanted if f"electra_fast::{op}" not in ran}
    assert not missing, f"these steps ran on the references: {sorted(missing)}"
    assert {"electra_fast::generator_step", "electra_fast::generator_step_tile"} & ran
