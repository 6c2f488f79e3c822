"""benchmarks/report.py: throughput and bandwidth share from the work a benchmark records."""

import pytest

from benchmarks.report import markdown, merged, rows


def bench(op, provider, median_s, **extra):
    info = {"op": op, "provider": provider, "mode": "m", "size": "s", "device_name": "gpu"}
    return {
        "name": op,
        "stats": {"data": [median_s] * 3, "median": median_s},
        "extra_info": info | extra,
    }


def test_throughput_and_share_of_the_copy_bandwidth():
    report = {
        "datetime": "2026-11-23T00:00:00",
        "benchmarks": [
            bench("hbm", "copy", 1e-3, flops=0, bytes=2_000_000_000),  # 2000 GB/s
            bench("attention", "ours", 2e-3, flops=4e11, bytes=1_000_000_000),
            bench("attention", "plain", 1e-3),
        ],
    }
    table = {r["provider"]: r for r in rows(report)}
    assert abs(table["ours"]["tflops"] - 200.0) < 1e-9  # 4e11 / 2e-3 / 1e12
    assert abs(table["ours"]["gbps"] - 500.0) < 1e-9
    assert abs(table["ours"]["bandwidth_share"] - 0.25) < 1e-12
    assert "tflops" not in table["plain"] and "gbps" not in table["plain"]
    text = markdown(list(table.values()), "machine")
    assert "| 200.0 | 500 (25%) |" in text
    plain = next(line for line in text.splitlines() if "| plain |" in line)
    assert plain.endswith("|  |  |")  # no work recorded: empty cells


def test_reports_of_several_files_make_one_table():
    """gpu_check.sh writes one file per benchmark file: the copy row of one serves the others."""
    first = {"datetime": "2026-11-23T01:00:00", "machine_info": {"node": "a"},
             "benchmarks": [bench("hbm", "copy", 1e-3, bytes=2_000_000_000)]}  # fmt: skip
    second = {"datetime": "2026-11-24T00:00:00", "machine_info": {"node": "b"},
              "benchmarks": [bench("attention", "ours", 2e-3, bytes=1_000_000_000)]}  # fmt: skip
    report = merged([first, second])
    assert report["machine_info"] == {"node": "a"}
    table = {r["provider"]: r for r in rows(report)}
    assert table.keys() == {"copy", "ours"} and table["ours"]["date"] == "2026-11-23"
    assert abs(table["ours"]["bandwidth_share"] - 0.25) < 1e-12
    with pytest.raises(ValueError, match="no benchmark report"):
        merged([])
