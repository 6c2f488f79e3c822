"""Does a C++ exception thrown in electra_fast's extensions reach Python as an error, however the
caller runs? On the first GPU run (H100 machine, Python 3.12), pytest-xdist workers died of a
segmentation fault whenever one of our C++ functions threw, while a fresh process caught the same
throws. This tries the throws on the main thread, on other threads, in a pytest-xdist-style
worker (an execnet gateway), and after what a test worker has done before (imported transformers
and sentencepiece, compiled with torch.compile, forked, run a CUDA op). Each case runs in a
process of its own, so that a crash is an exit status (-11) in the report rather than the end of
it. It prints a line per case, and writes the report as one JSON object to --json.

    python benchmarks/throw_check.py [--json FILE]
"""

import argparse
import importlib.util
import json
import platform
import resource
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
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
CAUGHT = (
    "def caught():\n"
    "    try:\n"
    "        call()\n"
    "    except Exception as error:\n"
    "        return f'caught {type(error).__name__}'\n"
    "    return 'no exception'\n"
)
# Where the throw runs. In an execnet gateway's worker the case's code runs as pytest-xdist runs
# tests (execmodel main_thread_only, the code sent over a channel); a crash there ends the
# worker, which the parent reports.
WAYS = {
    "main thread": "print(caught(), flush=True)\n",
    "thread": (
        "import threading\nt = threading.Thread(target=lambda: print(caught(), flush=True))\n"
        "t.start()\nt.join()\n"
    ),
    "thread with a 256 KiB stack": (
        "import threading\nthreading.stack_size(256 * 1024)\n"
        "t = threading.Thread(target=lambda: print(caught(), flush=True))\nt.start()\nt.join()\n"
    ),
    "execnet worker": (
        "import execnet, sys\n"
        "gateway = execnet.makegateway('execmodel=main_thread_only//popen//python=' + "
        "sys.executable)\n"
        "channel = gateway.remote_exec(CODE + 'channel.send(caught())\\n')\n"
        "try:\n"
        "    print(channel.receive(120), flush=True)\n"
        "except Exception as error:\n"
        "    print(f'the worker died: {type(error).__name__}', flush=True)\n"
        "    sys.exit(3)\n"
    ),
}
if importlib.util.find_spec("execnet") is None:  # pytest-xdist's transport, not always there
    del WAYS["execnet worker"]
# What ran in the process before the throw (on the main thread), as in a test worker that has
# run other tests first.
BEFORE = {
    "after importing transformers and sentencepiece": "import transformers, sentencepiece\n",
    "after torch.compile on the CPU": (
        "import torch\nprint(torch.compile(lambda x: x.sin() + 1)(torch.ones(4)).sum().item())\n"
    ),
    "after a fork": (
        "import os\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)\n"
    ),
    "after a CUDA op": (
        "import torch\nif torch.cuda.is_available():\n"
        "    torch.ones(1, device='cuda').sum().item()\n"
    ),
}


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def case_source(throw: str, way: str, before: str = "") -> str:
    code = THROWS[throw] + CAUGHT
    if way == "execnet worker":
        return f"CODE = {code!r}\n" + WAYS[way]
    return before + code + WAYS[way]


def run_case(source: str) -> dict:
    try:
        done = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                              timeout=240)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"exit": None, "said": "timed out after 240 s"}
    said = (done.stdout.strip().splitlines() or done.stderr.strip().splitlines() or [""])[-1]
    return {"exit": done.returncode, "said": said}


def cases() -> dict[str, str]:
    """Case name -> the source of its process."""
    named = {f"{throw}, {way}": case_source(throw, way) for throw in THROWS for way in WAYS}
    for throw in THROWS:
        for name, before in BEFORE.items():
            named[f"{throw}, main thread, {name}"] = case_source(throw, "main thread", before)
    return named


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the report (versions, limits, cases) here")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    named = cases()
    with ThreadPoolExecutor(max_workers=4) as pool:  # each case is a process of its own
        results = dict(zip(named, pool.map(run_case, named.values()), strict=True))
    report = {
        "python": platform.python_version(),
        "stack_limit": {"soft": soft, "hard": hard},  # -1: unlimited
        "packages": {p: version(p) for p in ("torch", "pytest", "pytest-xdist", "execnet")},
        "cases": results,
    }
    for case, result in results.items():
        print(f"{case}: exit {result['exit']}, {result['said']}")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=2)
    return 0 if all(c["exit"] == 0 for c in report["cases"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
