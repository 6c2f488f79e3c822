"""electra_fast.distributed in a plain process: the device choice and its errors, and the
share and gather of a list (identities without a process group; two ranks' halves are
tested under torchrun in tests/finetuning/test_distributed.py)."""

import pytest
import torch

from electra_fast import distributed


def test_device_choice_and_errors(monkeypatch):
    monkeypatch.delenv(distributed.DEVICE_VARIABLE, raising=False)
    assert distributed.device_type() == ("cuda" if torch.cuda.is_available() else "cpu")
    assert distributed.device_type("cpu") == "cpu"
    monkeypatch.setenv(distributed.DEVICE_VARIABLE, "cpu")
    assert distributed.device_type() == "cpu"
    with pytest.raises(ValueError, match="device must be 'cuda' or 'cpu', got 'tpu'"):
        distributed.device_type("tpu")
    monkeypatch.setenv(distributed.DEVICE_VARIABLE, "gpu")
    with pytest.raises(ValueError, match=r"\$ELECTRA_FAST_DEVICE must be .* got 'gpu'"):
        distributed.device_type()
    assert distributed.init("cpu") == (0, 1)
    assert distributed.device_for(0, "cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_asking_for_a_missing_gpu_is_an_error():
    with pytest.raises(ValueError, match="'cuda' was asked for but no CUDA GPU is visible"):
        distributed.device_type("cuda")


def test_share_and_gather_alone():
    items = list(range(7))
    assert distributed.share(items) == items and distributed.gather(items, 7) == items
    assert distributed.is_main()
