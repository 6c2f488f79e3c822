"""Loading the extension, falling back to the references, and `python -m electra_fast.info`."""

import json
import subprocess
import sys

import pytest

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
    result = python(code)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["warnings"]) == 1 and "reference" in report["warnings"][0]
    assert report["info"]["extension_loaded"] is False
    assert "electra_fast._C" in report["info"]["extension_error"]
    assert report["info"]["ops"]["mask_tokens"] == {"cpu": False, "cuda": False}
    assert report["chosen"] == 2


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
