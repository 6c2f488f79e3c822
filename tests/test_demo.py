"""scripts/demo.py, the README's main command, end to end with a few steps: every artifact it
promises exists and loads, a second call resumes instead of starting again, and bad arguments
are refused by name."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.torchrun import cpu_environment

DEMO = Path(__file__).resolve().parents[1] / "scripts" / "demo.py"


def demo(*arguments: str, steps_variable: str | None = None):
    environment = cpu_environment()
    environment.pop("DEMO_STEPS", None)
    if steps_variable is not None:
        environment["DEMO_STEPS"] = steps_variable
    command = [sys.executable, str(DEMO), *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)


def test_the_demo_makes_everything_it_lists(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo"
    result = demo("--out", str(out), "--steps", "3")
    assert result.returncode == 0, result.stderr[-4000:]
    for path in ("tokenizer", "data", "run/metrics.jsonl", "run/loss.png",
                 "run/export/discriminator", "run/export/generator"):  # fmt: skip
        assert (out / path).exists(), path
        assert str(out / path.split("/")[0]) in result.stdout
    assert json.loads((out / "run/metrics.jsonl").open().readline())["step"] == 1
    assert sorted(p.name for p in (out / "run/checkpoints").iterdir()) == ["step-00000003.pt"]

    from transformers import ElectraForPreTraining

    from electra_fast.tokenization import load

    tokenizer = load(out / "tokenizer")
    assert tokenizer.vocab_size == 4000
    model = ElectraForPreTraining.from_pretrained(out / "run/export/discriminator")
    assert model.config.vocab_size == 4000

    again = demo("--out", str(out), steps_variable="4")  # the step count from $DEMO_STEPS
    assert again.returncode == 0, again.stderr[-4000:]
    assert "1/4" not in again.stderr and "2/4" not in again.stderr  # tokenizer and data kept
    assert "from step-00000003.pt (step 3)" in again.stderr and "finished at step 4" in again.stderr
    assert (out / "run/checkpoints/step-00000004.pt").is_file()


@pytest.mark.parametrize(
    ("arguments", "variable", "message"),
    [
        (["--steps", "0"], None, "argument --steps: the number of steps must be a whole number "
                                 "above 0, got '0'"),
        (["--steps", "-2"], None, "got '-2'"),
        ([], "ten", "argument --steps: the number of steps must be .* got 'ten'"),
        (["--bogus"], None, "unrecognized arguments: --bogus"),
    ],
)  # fmt: skip
def test_bad_arguments_are_refused_by_name(tmp_path, arguments, variable, message):
    result = demo("--out", str(tmp_path / "demo"), *arguments, steps_variable=variable)
    assert result.returncode == 2
    assert re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "demo").exists()
