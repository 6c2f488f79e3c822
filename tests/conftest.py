import pytest
import torch

from electra_fast import _extension

CUDA = torch.cuda.is_available()
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")]
    ),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(params=["kernel", "reference"])
def implementation(request, device):
    """Which implementation of an op a test exercises; `kernel` skips where none is built.
    The op is the test module's OP."""
    op = request.module.OP
    if request.param == "kernel" and not _extension.has_kernel(op, device.type):
        pytest.skip(f"no compiled {device.type} kernel in this build")
    return request.param


@pytest.fixture(autouse=True)
def _train_on_the_cpu(request, monkeypatch):
    """The training loops' tests are CPU tests (exact resumes, one process against two gloo
    ones), also where a GPU is visible; the ones marked cuda choose their device themselves."""
    if "cuda" not in request.keywords:
        monkeypatch.setenv("ELECTRA_FAST_DEVICE", "cpu")
