"""The benchmark scripts that are not pytest benchmarks run, on the CPU, small."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from electra_fast import _extension

HERE = Path(__file__).resolve().parent


def launch(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True,
                          text=True, timeout=300, cwd=HERE.parent)  # fmt: skip


def run(script: str, *args: str) -> str:
    done = launch(script, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_profile_step_groups_the_step_time(tmp_path):
    if not _extension.has_kernel("generator_step", "cpu"):
        pytest.skip("no CPU kernels built")
    out = tmp_path / "profile.md"
    text = run("profile_step.py", "--device", "cpu", "--batch", "1", "--length", "16",
               "--steps", "1", "--top", "5", "--out", str(out))  # fmt: skip
    assert out.read_text() == text.rstrip("\n") + "\n"
    groups = dict(re.findall(r"^\| (matmul|ours|other) \| [\d.]+ \| ([\d.]+)% \|$", text, re.M))
    assert set(groups) == {"matmul", "ours", "other"}, text
    assert sum(map(float, groups.values())) == pytest.approx(100, abs=0.2)
    assert "electra_fast::attention_forward" in text or "aten::mm" in text


def test_host_times_are_the_ops_own_cpu_times():
    """profile_step's host table, here of CPU ops: each call counted, and the matmul's own time
    most of the time of steps that are one large matmul each."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    sys.path.insert(0, str(HERE))
    from profile_step import host_times

    a = torch.randn(512, 512)
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        for _ in range(3):
            torch.matmul(a, a)
    rows = host_times(trace)
    assert rows["aten::mm"][0] == 3
    assert rows["aten::mm"][1] > 0.5 * sum(t for _, t in rows.values())


def test_count_step_ops_counts_the_step():
    text = run("count_step_ops.py", "--top", "3")
    parts = dict(re.findall(r"(forward and backward|clip, flag, Adam): (\d+)", text))
    total, not_views = map(int, re.search(r"(\d+) ops in all, (\d+) of them", text).groups())
    assert total == sum(map(int, parts.values())) and 0 < not_views < total


def test_throw_check_reports_each_throw_caught(tmp_path):
    if not (_extension.has_kernel("generator_step", "cpu") and _extension.EXTENSION_LOADED):
        pytest.skip("no CPU kernels built")
    lines = run("throw_check.py", "--json", str(tmp_path / "throws.json")).splitlines()
    report = json.loads((tmp_path / "throws.json").read_text())
    # Each throw on 3 ways (main thread, two threads) and an execnet worker where execnet is
    # installed, and after 4 kinds of earlier work on the main thread.
    ways = 4 if importlib.util.find_spec("execnet") else 3
    assert len(report["cases"]) == len(lines) == 2 * (ways + 4)
    for case, result in report["cases"].items():
        assert result["exit"] == 0 and result["said"].startswith("caught "), (case, result)


def test_step_traffic_counts_bytes_and_flops_by_hand():
    """Traffic's accounting against hand counts: a matmul reads its operands, writes its
    product and does 2 x M x N x K FLOPs; an in-place add reads both tensors and writes one; a
    view moves nothing; mm_float32 as on CUDA reads bf16 and writes float32, once."""
    sys.path.insert(0, str(HERE))
    import torch
    from step_traffic import Traffic

    a, b = torch.randn(64, 32), torch.randn(32, 16)
    x, y = torch.randn(100), torch.randn(100)
    traffic = Traffic(bandwidth=1e9, peak=1e12)
    with traffic:
        torch.mm(a, b)
        x.add_(y)
        a.t()
    assert traffic.bytes["aten.mm"] == 4 * (64 * 32 + 32 * 16 + 64 * 16)
    assert traffic.flops["aten.mm"] == 2 * 64 * 32 * 16
    assert traffic.bytes["aten.add_"] == 4 * 100 * 3
    assert "aten.t" not in traffic.bytes and traffic.calls["aten.t"] == 1
    assert traffic.floor["aten.mm"] == pytest.approx(4 * (64 * 32 + 32 * 16 + 64 * 16) / 1e9)

    half, a, b = Traffic(bandwidth=1e9, peak=1e12), a.bfloat16(), b.bfloat16()
    with half:
        product = half.mm_float32_as_on_cuda(a, b)
    assert product.dtype == torch.float32
    assert dict(half.bytes) == {"aten.mm": 2 * (64 * 32 + 32 * 16) + 4 * 64 * 16}
    assert half.calls["aten.mm"] == 1


def test_step_traffic_records_layer_norms_as_cuda_autocast_runs_them():
    """Under CPU autocast, within recorded_as_on_cuda, both LayerNorms give what CUDA autocast
    gives (torch's documented float32 layer_norm; our op's CUDA rule): float32 outputs, torch's
    from an input cast first, which counts; and both leave as they were found."""
    sys.path.insert(0, str(HERE))
    import torch
    import torch.nn.functional as F
    from step_traffic import Traffic, recorded_as_on_cuda

    from electra_fast.ops import dropout_add_layer_norm, layer_norm

    x, residual = torch.randn(4, 16, dtype=torch.bfloat16), torch.randn(4, 16)
    weight, bias = torch.ones(16), torch.zeros(16)
    rule = layer_norm.autocast_to_float32
    traffic = Traffic(bandwidth=1e9, peak=1e12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.layer_norm(x, (16,), weight, bias).dtype == torch.bfloat16
        with recorded_as_on_cuda(traffic), traffic:
            assert F.layer_norm(x, (16,), weight, bias).dtype == torch.float32
            out, out_x = dropout_add_layer_norm(
                x, residual.bfloat16(), weight, bias, with_out_x=True
            )
        assert F.layer_norm(x, (16,), weight, bias).dtype == torch.bfloat16
    assert (out.dtype, out_x.dtype) == (torch.float32, torch.bfloat16)
    assert traffic.calls["aten._to_copy"] >= 1 and traffic.bytes["aten._to_copy"] >= 6 * 4 * 16
    assert layer_norm.autocast_to_float32 is rule


def test_step_traffic_gives_a_floor_per_step():
    text = run("step_traffic.py", "--batch", "1", "--length", "64", "--top", "4")
    assert "1 x 64 tokens" in text
    moved, flops = map(float, re.search(r"([\d.]+) GB moved, ([\d.]+) TFLOP", text).groups())
    ms, millions = map(float, re.search(r"([\d.]+) ms per step, ([\d.]+)M tokens/s", text).groups())
    assert moved > 0 and ms >= moved / 2953 * 1e3 * 0.99  # no op is faster than its bytes
    assert millions == pytest.approx(64 / ms / 1e3, rel=0.02)
    rows = re.findall(r"^\| `([\w.]+)` \| \d+ \|", text, re.M)
    assert len(rows) == 4 and "aten.t" not in rows


@pytest.mark.parametrize("flag", [("--length", "513"), ("--length", "0"), ("--batch", "0")])
def test_step_traffic_refuses_sizes_it_cannot_record(flag):
    done = launch("step_traffic.py", *flag)
    assert done.returncode == 2 and flag[0] in done.stderr
