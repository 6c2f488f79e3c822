"""Turns a pytest-benchmark JSON file into result rows and a markdown table.

    python benchmarks/report.py BENCH.json --markdown OUT.md --rows OUT.json

One row per benchmark: op, provider, mode, size, device, p20/p50/p80 in milliseconds, the peak
device memory the benchmark recorded (if it did), and the machine and date of the run.
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
    return out


def markdown(table: list[dict], machine: str) -> str:
    lines = [
        f"Machine: {machine}",
        "",
        "| op | provider | mode | size | device | p20 ms | p50 ms | p80 ms | rounds | peak MiB |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(table, key=lambda r: (r["op"], r["mode"], r["size"], r["device"], r["p50_ms"])):
        lines.append(
            f"| {r['op']} | {r['provider']} | {r['mode']} | {r['size']} | {r['device']} "
            f"| {r['p20_ms']:.4f} | {r['p50_ms']:.4f} | {r['p80_ms']:.4f} | {r['rounds']} "
            f"| {'' if r.get('peak_mib') is None else format(r['peak_mib'], '.1f')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bench_json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--rows", type=Path)
    args = parser.parse_args()
    report = json.loads(args.bench_json.read_text())
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
