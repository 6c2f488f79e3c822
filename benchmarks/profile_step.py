"""Where an ELECTRA-small pretraining step spends its time: the loop's step (TrainStep, or with
--graphs the GraphedStep of "cuda_graphs": true) under torch.profiler, a table of the kernels (on
a GPU) or ops (on the CPU) by their own time per step, grouped into matrix multiplies, our ops
and the rest, with the step's wall time beside it. The table says which kernel to work on next;
timings to report come from bench_pretraining.py. On a GPU a second table gives the host's own
time by op and CUDA runtime call, which shows where an eager step's host time goes and whether
it waits for the device.

    python benchmarks/profile_step.py --device cuda [--graphs] [--batch 128 --length 128]
"""

import argparse
import os
import re
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.bench_pretraining import MASK, SPECIALS, VOCAB, loop_step  # noqa: E402
from electra_fast.model import ElectraConfig, ElectraForPretraining  # noqa: E402
from electra_fast.pretraining.step import GraphedStep  # noqa: E402

# Kernel (or op) names by group: cuBLAS/cuBLASLt/CUTLASS matrix multiplies, electra_fast's
# own, and everything else (torch's elementwise kernels, reductions, copies, Adam).
MATMUL = re.compile(r"gemm|cutlass|xmma|nvjet|cublas|aten::(mm|addmm|bmm|matmul|linear)\b", re.I)
OURS = re.compile(r"electra_fast")


def group(name: str) -> str:
    return "ours" if OURS.search(name) else "matmul" if MATMUL.search(name) else "other"


def own_times(trace, cuda: bool) -> dict[str, tuple[int, float]]:
    """name -> (calls, own microseconds): kernels on a GPU, ops on the CPU."""
    rows = {}
    for event in trace.key_averages():
        if cuda:
            if event.device_type != torch.autograd.DeviceType.CUDA:
                continue
            own = event.self_device_time_total
        else:
            if event.key.startswith(("ProfilerStep", "cuda")):
                continue
            own = event.self_cpu_time_total
        if own > 0:
            rows[event.key] = (event.count, own)
    return rows


def host_times(trace) -> dict[str, tuple[int, float]]:
    """name -> (calls, own host microseconds) of the ops and CUDA runtime calls (cudaLaunchKernel,
    cudaStreamSynchronize, cudaMemcpyAsync, ...): where the host's share of an eager step goes,
    and whether it waits for the device anywhere (a synchronising call's own time is the wait)."""
    rows = {}
    for event in trace.key_averages():
        if event.device_type == torch.autograd.DeviceType.CPU and event.self_cpu_time_total > 0:
            rows[event.key] = (event.count, event.self_cpu_time_total)
    return rows


def table(rows: dict, steps: int, wall_ms: float, top: int, title: str) -> str:
    total = sum(t for _, t in rows.values()) / steps / 1000
    lines = [f"### {title}", "",
             f"wall time {wall_ms:.3f} ms per step; {total:.3f} ms of own time per step", "",
             "| group | ms per step | share |", "|---|---:|---:|"]  # fmt: skip
    groups: dict[str, float] = {}
    for name, (_, t) in rows.items():
        groups[group(name)] = groups.get(group(name), 0.0) + t / steps / 1000
    for name, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {ms:.3f} | {100 * ms / total:.1f}% |")
    lines += ["", "| kernel or op | group | calls per step | µs per step | share |",
              "|---|---|---:|---:|---:|"]  # fmt: skip
    ranked = sorted(rows.items(), key=lambda kv: -kv[1][1])[:top]
    for name, (calls, t) in ranked:
        short = name if len(name) <= 90 else name[:87] + "..."
        short = short.replace("|", "\\|")
        us = t / steps
        lines.append(f"| `{short}` | {group(name)} | {calls / steps:g} | {us:.1f} | "
                     f"{100 * us / 1000 / total:.1f}% |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--graphs", action="store_true", help="the step replayed from CUDA graphs")
    parser.add_argument("--batch", type=int, default=None, help="default: 128 on a GPU, 8 on CPU")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=25, help="kernels or ops listed")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.graphs and not cuda:
        parser.error("--graphs needs --device cuda")
    B, L = args.batch or (128 if cuda else 8), args.length
    config = ElectraConfig.preset("small", vocab_size=VOCAB, mask_token_id=MASK,
                                  special_token_ids=SPECIALS)  # fmt: skip
    torch.manual_seed(0)
    ids = torch.randint(1000, VOCAB, (B, L), device=device)
    ids[:, 0], ids[:, -1] = 101, 102
    step = loop_step(ElectraForPretraining(config).to(device), ids, torch.ones_like(ids), device,
                     graphs=args.graphs)  # fmt: skip

    def synchronise():
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(2 * GraphedStep.WARMUP + 2):  # every part warm (and recorded, with graphs)
        step()
    synchronise()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronise()
    wall_ms = (time.perf_counter() - start) / args.steps * 1000
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as trace:
        for _ in range(args.steps):
            step()
        synchronise()
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    mode = "replayed from CUDA graphs" if args.graphs else "eager"
    if cuda and os.environ.get("ELECTRA_FAST_WGMMA") == "1":
        mode += ", wgmma attention kernels"
    title = (f"ELECTRA-small step, B={B} L={L}, {mode}, {name}: "
             f"{B * L / wall_ms * 1000:,.0f} tokens/s")  # fmt: skip
    text = table(own_times(trace, cuda), args.steps, wall_ms, args.top, title)
    if cuda:  # the host's side too (on the CPU the table above is it)
        text += "\n" + table(host_times(trace), args.steps, wall_ms, args.top,
                             f"Host time of the same steps (CPU self time): {mode}")  # fmt: skip
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
