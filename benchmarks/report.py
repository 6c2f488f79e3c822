"""Turns pytest-benchmark JSON files into result rows and a markdown table.

    python benchmarks/report.py BENCH.json [MORE.json ...] --markdown OUT.md --rows OUT.json

Several files (gpu_check.sh writes one per benchmark file) make one table, the machine taken
from the first.

One row per benchmark: op, provider, mode, size, device, p20/p50/p80 in milliseconds, the peak
device memory the benchmark recorded (if it did), and the machine and date of the run. Rows that
record their useful work (`flops`, `bytes` in extra_info) also get TFLOP/s and GB/s at the
median, and the GB/s as a share of the fastest "hbm" copy row of the same device.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def percentile(sorted_values: list[float], q: float) -> float:
    return (
        statistics.quantiles(sorted_values, n=100, method="inclusive")[int(q) - 1]
        if len(sorted_values) > 1
        else sorted_values[0]
    )


def merged(reports: list[dict]) -> dict:
    """One report holding the benchmarks of all `reports`, with the first one's machine and
    date (the hbm copy row of one file then serves the bandwidth shares of the others)."""
    if not reports:
        raise ValueError("no benchmark report to merge")
    return {**reports[0], "benchmarks": [b for r in reports for b in r["benchmarks"]]}


def rows(report: dict) -> list[dict]:
    date = report.get("datetime", "")[:10]
    out = []
    for bench in report["benchmarks"]:
        info = bench.get("extra_info", {})
        data = sorted(bench["stats"].get("data") or [bench["stats"]["median"]])
        out.append(
            {
                "op": info.get("op", bench["name"]),
                "provider": info.get("provider", ""),
                "mode": info.get("mode", ""),
                "size": info.get("size", bench.get("param", "")),
                "device": info.get("device_name", info.get("device", "")),
                "p20_ms": percentile(data, 20) * 1e3,
                "p50_ms": percentile(data, 50) * 1e3,
                "p80_ms": percentile(data, 80) * 1e3,
                "rounds": len(data),
                "peak_mib": info.get("peak_mib"),
                "torch": info.get("torch", ""),
                "date": date,
            }
        )
        median_s = out[-1]["p50_ms"] / 1e3
        if info.get("flops") is not None:
            out[-1]["tflops"] = info["flops"] / median_s / 1e12
        if info.get("bytes") is not None:
            out[-1]["gbps"] = info["bytes"] / median_s / 1e9
    copies = {}
    for r in out:
        if r["op"] == "hbm" and "gbps" in r:
            copies[r["device"]] = max(copies.get(r["device"], 0.0), r["gbps"])
    for r in out:
        if "gbps" in r and r["device"] in copies:
            r["bandwidth_share"] = r["gbps"] / copies[r["device"]]
    return out


def _throughput(r: dict) -> str:
    """' | TFLOP/s | GB/s (share) ' cells, empty where the row recorded no work."""
    tflops = f"{r['tflops']:.1f}" if r.get("tflops") else ""
    gbps = f"{r['gbps']:.0f}" if "gbps" in r else ""
    if "bandwidth_share" in r:
        gbps += f" ({100 * r['bandwidth_share']:.0f}%)"
    return f" | {tflops} | {gbps}"


def markdown(table: list[dict], machine: str) -> str:
    lines = [
        f"Machine: {machine}",
        "",
        "| op | provider | mode | size | device | p20 ms | p50 ms | p80 ms | rounds | peak MiB "
        "| TFLOP/s | GB/s (of copy) |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(table, key=lambda r: (r["op"], r["mode"], r["size"], r["device"], r["p50_ms"])):
        lines.append(
            f"| {r['op']} | {r['provider']} | {r['mode']} | {r['size']} | {r['device']} "
            f"| {r['p20_ms']:.4f} | {r['p50_ms']:.4f} | {r['p80_ms']:.4f} | {r['rounds']} "
            f"| {'' if r.get('peak_mib') is None else format(r['peak_mib'], '.1f')}"
            f"{_throughput(r)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bench_json", type=Path, nargs="+")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--rows", type=Path)
    args = parser.parse_args()
    report = merged([json.loads(path.read_text()) for path in args.bench_json])
    table = rows(report)
    machine_info = report.get("machine_info", {})
    cpu = machine_info.get("cpu", {}).get("brand_raw", machine_info.get("processor", "?"))
    machine = f"{cpu}, {machine_info.get('node', '?')}, python {machine_info.get('python_version')}"
    text = markdown(table, machine)
    if args.markdown:
        args.markdown.write_text(text)
    if args.rows:
        args.rows.write_text(json.dumps(table, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
