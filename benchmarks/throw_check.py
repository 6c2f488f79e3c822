"""Does a C++ exception thrown in electra_fast's extensions reach Python as an error, however the
caller runs? On the first GPU run (H100 machine, Python 3.12), pytest-xdist workers died of a
segmentation fault whenever one of our C++ functions threw, while a fresh process caught the same
throws. This tries the throws on the main thread and on other threads (xdist's workers run tests
on whatever thread execnet gives them), each case in a process of its own so that a crash is an
exit status (-11) in the report rather than the end of it. It prints one JSON object.

    python benchmarks/throw_check.py
"""

import json
import platform
import resource
import subprocess
import sys
from importlib import metadata

# Calls that throw in C++: a compiled op's argument check (a c10::Error through the dispatcher)
# and a pybind11 module's (a std::exception translated by pybind11).
THROWS = {
    "op": (
        "import torch\nfrom electra_fast import _extension\n"
        "def call():\n"
        "    torch.ops.electra_fast.generator_step.default(torch.zeros(3), torch.zeros(3, "
        "dtype=torch.long), torch.tensor(0), 1.0, False, -100, False, 0)\n"
    ),
    "pybind11": (
        "from electra_fast import _vi\n"
        "def call():\n"
        "    _vi.Dictionary.open('/nonexistent/electra_fast', True, False)\n"
    ),
}
RUN = (
    "def caught():\n"
    "    try:\n"
    "        call()\n"
    "    except Exception as error:\n"
    "        print('caught', type(error).__name__, flush=True)\n"
    "    else:\n"
    "        print('no exception', flush=True)\n"
)
WAYS = {
    "main thread": "caught()\n",
    "thread": "import threading\nt = threading.Thread(target=caught)\nt.start()\nt.join()\n",
    "thread with a 256 KiB stack": (
        "import threading\nthreading.stack_size(256 * 1024)\n"
        "t = threading.Thread(target=caught)\nt.start()\nt.join()\n"
    ),
}


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def run_case(throw: str, way: str) -> dict:
    source = THROWS[throw] + RUN + WAYS[way]
    try:
        done = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                              timeout=120)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"exit": None, "said": "timed out after 120 s"}
    said = (done.stdout.strip().splitlines() or done.stderr.strip().splitlines() or [""])[-1]
    return {"exit": done.returncode, "said": said}


def main() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    report = {
        "python": platform.python_version(),
        "stack_limit": {"soft": soft, "hard": hard},  # -1: unlimited
        "packages": {p: version(p) for p in ("torch", "pytest", "pytest-xdist", "execnet")},
        "cases": {f"{throw}, {way}": run_case(throw, way) for throw in THROWS for way in WAYS},
    }
    print(json.dumps(report, indent=2))
    return 0 if all(c["exit"] == 0 for c in report["cases"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
