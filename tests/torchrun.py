"""Running the electra-fast command under torchrun, for the multi-process tests."""

import os
import subprocess
import sys
import tempfile


def cpu_environment(**extra: str) -> dict[str, str]:
    """This process's environment for a child that must run on the CPU, one thread per process
    (the machines have 2 cores and the tests start two ranks), with `extra` set."""
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", **extra}


def torchrun_cli(port: int, *arguments: str, processes: int = 2) -> None:
    """`electra-fast ARGUMENTS` in `processes` CPU processes (gloo) under torchrun, which must
    succeed."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
               "--master-port", str(port), "-m", "electra_fast.cli", *arguments]  # fmt: skip
    # torchrun leaves a torchelastic_* folder in the temporary directory at every run.
    with tempfile.TemporaryDirectory() as scratch:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                                env=cpu_environment(TMPDIR=scratch))  # fmt: skip
    assert result.returncode == 0, result.stderr[-6000:]
