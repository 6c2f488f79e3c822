"""The precision rule shared by the training loops (electra_fast.amp)."""

import pytest
import torch

from electra_fast import amp

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_is_fp32_on_the_cpu_and_bf16_or_fp16_on_a_gpu(monkeypatch):
    assert amp.resolve("auto", CPU) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert amp.resolve("auto", CUDA) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # T4, V100
    assert amp.resolve("auto", CUDA) == "fp16"
    assert amp.resolve("bf16", CUDA) == "bf16" and amp.resolve("fp32", CUDA) == "fp32"


def test_a_bad_precision_is_named():
    with pytest.raises(
        ValueError, match="precision must be one of auto, fp32, bf16, fp16, got 'f8'"
    ):
        amp.resolve("f8", CPU)


@pytest.mark.parametrize(("precision", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                                   ("fp16", torch.float16)])  # fmt: skip
def test_autocast_gives_a_fresh_context_of_the_dtype(precision, dtype):
    make = amp.autocast(precision, CPU)
    x = torch.randn(3, 3)
    for _ in range(2):  # each call a new context, usable once per step
        with make():
            assert (x @ x).dtype == dtype


def test_only_fp16_has_a_loss_scaler():
    assert amp.grad_scaler("fp32", CPU) is None and amp.grad_scaler("bf16", CPU) is None
    assert amp.grad_scaler("auto", CPU) is None
    assert isinstance(amp.grad_scaler("fp16", CPU), torch.amp.GradScaler)
