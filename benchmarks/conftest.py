"""Shared pieces of the benchmarks: devices, synchronised timing, and the row every result gets.

Run with `make bench` or `pytest benchmarks`; `python benchmarks/report.py` turns the JSON that
`--benchmark-json` writes into the tables under benchmarks/results/.
"""

import pytest
import torch

CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no GPU"))]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def synchronised(fn, device: torch.device):
    """fn, made to wait for the GPU, so that a timing covers the work and not only its launch."""
    if device.type != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return run


def describe(benchmark, *, op: str, provider: str, mode: str, size: str, device: torch.device):
    """The row that report.py groups and prints."""
    benchmark.extra_info.update(
        op=op,
        provider=provider,
        mode=mode,
        size=size,
        device=device.type,
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        torch=torch.__version__,
    )
