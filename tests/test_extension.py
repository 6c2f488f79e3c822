"""Loading the extension, falling back to the references, and `python -m electra_fast.info`."""

import functools
import json
import re
import subprocess
import sys

import pytest
import torch

from electra_fast import _extension


def python(code: str, **env) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )


def report_of(code: str) -> dict:
    """Runs `code` in a fresh interpreter; the JSON object it printed."""
    result = python(code)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_info_json_reports_what_loaded():
    result = subprocess.run(
        [sys.executable, "-m", "electra_fast.info", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    info = json.loads(result.stdout)
    for key in (
        "torch",
        "torch_cuda",
        "extension_loaded",
        "extension_error",
        "cuda_built",
        "cuda_archs",
        "ops",
        "tokenizers",
    ):
        assert key in info
    assert info["extension_loaded"] == _extension.EXTENSION_LOADED
    assert info["ops"] == {
        op: {"cpu": _extension.has_kernel(op, "cpu"), "cuda": _extension.has_kernel(op, "cuda")}
        for op in _extension.OP_NAMES
    }
    assert info["cuda_built"] == bool(info["cuda_archs"])
    # The wgmma kernels are what a 9.0 device runs only when no plain sm_90 code competes.
    archs = set(info["cuda_archs"])
    assert info["sm90a_kernels"] == ("9.0a" in archs and "9.0" not in archs)
    assert info["cuda_built"] == info["ops"]["mask_tokens"]["cuda"]
    if info["extension_loaded"]:
        assert info["extension_error"] is None and info["ops"]["mask_tokens"]["cpu"]


def test_a_failed_load_warns_and_falls_back_to_the_references():
    code = (
        "import sys, json, warnings, torch\n"
        "sys.modules['electra_fast._C'] = None  # makes `from electra_fast import _C` fail\n"
        "import electra_fast  # loads nothing yet: the ops load the kernels on first use\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    mask_tokens = electra_fast.mask_tokens\n"
        "from electra_fast import info\n"
        "out = mask_tokens(torch.tensor([[1, 5, 6, 7, 2]]), None, mask_token_id=3,\n"
        "    special_token_ids=[0, 1, 2], vocab_size=10, mask_prob=0.5, seed=1)\n"
        "print(json.dumps({'warnings': [str(w.message) for w in caught],\n"
        "                  'info': info.collect(), 'chosen': int(out.weights.sum())}))\n"
    )
    report = report_of(code)
    assert len(report["warnings"]) == 1 and "reference" in report["warnings"][0]
    assert report["info"]["extension_loaded"] is False
    assert "electra_fast._C" in report["info"]["extension_error"]
    assert report["info"]["ops"]["mask_tokens"] == {"cpu": False, "cuda": False}
    assert report["chosen"] == 2


def test_a_build_of_older_sources_is_not_used():
    """A _C that imports but lacks a registration the Python side relies on (here the C++
    autograd formula of attention) counts as not loaded: the references run, with gradients."""
    code = (
        "import json, torch\n"
        "has = torch._C._dispatch_has_kernel_for_dispatch_key\n"
        "torch._C._dispatch_has_kernel_for_dispatch_key = lambda op, key: (\n"
        "    key != 'Autograd' and has(op, key))  # as if csrc/ops/autograd.cpp were not built\n"
        "from electra_fast import _extension, attention\n"
        "q = torch.randn(1, 8, 2, 16, requires_grad=True)\n"
        "attention(q, q, q, dropout_p=0.1, seed=3).sum().backward()\n"
        "print(json.dumps({'error': _extension.EXTENSION_ERROR,\n"
        "                  'finite': bool(q.grad.isfinite().all() and q.grad.abs().sum() > 0)}))\n"
    )
    report = report_of(code)
    if _extension.EXTENSION_LOADED:
        assert "predates these sources" in report["error"]
        assert "attention_forward (Autograd)" in report["error"]
    assert report["finite"]


def test_a_build_whose_schema_lacks_an_argument_is_not_used(monkeypatch):
    """A schema without an argument these sources pass (an op that gained one since the build)
    is a reason not to load; the reason names the op and the argument."""
    if not _extension.EXTENSION_LOADED:
        pytest.skip("no compiled kernels in this build")
    assert _extension._load() is None
    monkeypatch.setitem(_extension.EXPECTED_ARGUMENTS, "mask_tokens", "no_such_argument")
    reason = _extension._load()
    assert (
        "predates these sources" in reason and "mask_tokens's argument no_such_argument" in reason
    )


def _reference_twins() -> list[str]:
    """The kernels' ops that have a reference op of the same name."""
    import electra_fast.ops  # noqa: F401  (registers the reference ops)

    references = getattr(torch.ops, _extension.REFERENCE_LIBRARY)
    return [op for op in _extension.OP_NAMES if hasattr(references, op)]


def test_the_masking_and_generator_step_ops_have_reference_twins():
    assert _reference_twins() == [
        "mask_tokens", "generator_step", "generator_step_tile", "generator_step_backward",
        "generator_step_backward_",
    ]  # fmt: skip


@pytest.mark.parametrize("op", _reference_twins())
def test_a_reference_op_has_its_kernels_schema(op):
    """The reference ops spell out their schemas (older torch cannot infer them); a reference
    whose schema drifted from the kernel's would trace and compile differently."""
    if not _extension.EXTENSION_LOADED:
        pytest.skip("no compiled kernels in this build")
    kernel = getattr(torch.ops.electra_fast, op).default._schema
    reference = getattr(getattr(torch.ops, _extension.REFERENCE_LIBRARY), op).default._schema
    assert str(reference).split("::", 1)[1] == str(kernel).split("::", 1)[1]


@pytest.mark.parametrize(("value", "forced"), [("1", True), ("0", False), ("", False)])
def test_reference_switch(value, forced):
    result = python(
        "from electra_fast import _extension; print(_extension.FORCE_REFERENCE)",
        ELECTRA_FAST_REFERENCE=value,
    )
    assert result.stdout.strip() == str(forced)


def test_reference_switch_rejects_other_values():
    result = python("import electra_fast.ops", ELECTRA_FAST_REFERENCE="yes")
    assert (
        result.returncode != 0 and "ELECTRA_FAST_REFERENCE must be 0, 1 or unset" in result.stderr
    )


def cuobjdump() -> str | None:
    """The toolkit's cuobjdump, or the copy that torch's triton dependency ships."""
    import importlib.util
    import shutil
    from pathlib import Path

    found = shutil.which("cuobjdump")
    if found is None and importlib.util.find_spec("triton") is not None:
        bundled = Path(importlib.util.find_spec("triton").origin).parent
        bundled = bundled / "backends" / "nvidia" / "bin" / "cuobjdump"
        found = str(bundled) if bundled.is_file() else None
    return found


@functools.cache
def extension_sass() -> str:
    """The SASS of every kernel in _C (sm_80 and sm_90a code), read once."""
    tool = cuobjdump()
    if not _extension.sm90a_kernels_built() or tool is None:
        pytest.skip("needs a build with sm_90a kernels and cuobjdump")
    from electra_fast import _C

    return subprocess.run(
        [tool, "-sass", _C.__file__], capture_output=True, text=True, check=True, timeout=300
    ).stdout


def test_the_sm90a_build_has_wgmma_and_the_sm80_code_mma_sync():
    """The attention kernels compiled to the tensor-core instructions they were written for: a
    build whose wgmma kernels fell back to nothing (a guard never true) would still pass every
    CPU test."""
    sass = extension_sass()
    assert "HGMMA.64x128x16.F32.BF16" in sass  # S = QK^T, and PV at D = 128
    assert "HGMMA.64x64x16.F32.BF16" in sass  # PV at D = 64
    # The backward's dV += P^T dO and dK += dS^T Q read [query][key] tiles transposed.
    assert re.search(r"HGMMA\.64x64x16\.F32\.BF16 \S+, gdesc\[\S+\]\.tnspA\.tnspB", sass)
    assert re.search(r"HGMMA\.64x128x16\.F32\.BF16 \S+, gdesc\[\S+\]\.tnspA\.tnspB", sass)
    assert "HMMA.16816.F32.BF16" in sass  # the sm80 kernels
    # dQ summed over blocks: 8-byte float atomics in the sm90 code, half the instructions.
    assert "REDG.E.ADD.F32x2" in sass
    # dQ within one block of keys: the second warpgroup hands its share to the first.
    assert re.search(r"BAR\.ARV 0x3, 0x100", sass) and re.search(r"BAR\.SYNC\S* 0x3, 0x100", sass)


def test_the_sm80_backward_up_to_128_keys_has_no_atomics():
    """attention_backward_kernel<T, D, 2> (8 warps, every key of a sequence) writes dq itself;
    <T, D, 1> adds it into the fp32 sum with atomics. Every variant of each, on both targets."""
    functions = re.split(r"\n\s*Function : ", extension_sass())[1:]
    halves = {1: 0, 2: 0}
    for function in functions:
        name = function.split(maxsplit=1)[0]
        found = re.search(r"attention_backward_kernelI\w+?Li(\d+)ELi([12])EE", name)
        if found is None:
            continue
        atomics = re.findall(r"\b(?:RED|ATOM)\S*", function)
        halves[int(found[2])] += 1
        if found[2] == "2":
            assert not atomics, name
        else:
            assert atomics, name
    assert halves == {1: 12, 2: 12}  # 2 dtypes x 3 head dims x 2 targets each
