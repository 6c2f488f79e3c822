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


def peak_memory_mib(fn, device: torch.device) -> float | None:
    """Device memory that one call of fn allocates at its peak beyond what was already in use,
    in MiB; None on CPU, where torch keeps no such count."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def smoke_size(benchmark, full: int, smoke: int) -> int:
    """`full` when timing, `smoke` when the benchmarks only run once to prove they work
    (`--benchmark-disable`, as `make test` does), to keep CI fast."""
    return smoke if benchmark.disabled else full
