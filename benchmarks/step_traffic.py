"""A floor under the GPU time of one pretraining step of ELECTRA-small (B sequences of L tokens,
bf16 autocast), from what each of its ops must move and compute. The step's ops are recorded on
the CPU under a dispatch mode, as in count_step_ops.py. For each op that is not a view: the bytes
of its tensor inputs and outputs, each read or written once, as a kernel that streams them would;
for matmuls and attention, the FLOPs. An op's floor is the larger of bytes / bandwidth and
FLOPs / peak, and the step's floor is the sum over its ops, which run one after another.

Defaults: the 2,953 GB/s that a 1 GiB copy reached on the H100 of
benchmarks/results/2026-11-24_h100.md, and the H100 SXM's 989 dense bf16 TFLOP/s from NVIDIA's
data sheet, which no matmul reaches. So the floor is below any real step, by how much is what
the GPU runs measure. CPU autocast casts as CUDA's does but for LayerNorm and the weight
gradients' matmuls, which the script makes as on CUDA: every LayerNorm (torch's and
dropout_add_layer_norm) runs in float32 and writes float32, its input cast first; a weight
gradient's matmul reads bf16 and writes float32 (the CPU would multiply float32 copies of its
operands). A tensor that one op reads twice counts twice, and an op that writes a tensor in
place counts a read of it too.

    python benchmarks/step_traffic.py [--batch 128] [--length 128] [--bandwidth 2953]
        [--tflops 989] [--top 20]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import math
import sys
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.count_step_ops import LENGTH, VIEWS, Counter, counted_step  # noqa: E402
from electra_fast.model import casts  # noqa: E402
from electra_fast.ops import _common, layer_norm, sampling_linear  # noqa: E402


def tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def moved_bytes(func, args: tuple, kwargs: dict, out) -> int:
    """Every tensor argument read once, those that the op's schema says it writes in place
    (Adam's moments, and its gradients too, a copy's destination) written once more, and the
    results that are new tensors written."""
    written = []
    for i, argument in enumerate(func._schema.arguments):
        if argument.alias_info is not None and argument.alias_info.is_write:
            value = args[i] if i < len(args) else kwargs.get(argument.name)
            written += tensors(value)
    read = tensors((args, kwargs))
    seen = {t.untyped_storage().data_ptr() for t in read}
    new = [t for t in tensors(out) if t.untyped_storage().data_ptr() not in seen]
    return sum(t.nbytes for t in read + written + new)


def matmul_flops(name: str, args: tuple) -> float:
    """2 x M x N x K for aten's matmuls. For our attention, 2 x B x H x L^2 x D per matmul of
    L x L scores: two forward (scores, then probabilities x values), five backward (the scores
    again, then the gradients of the values, of the probabilities, of the queries and of the
    keys), with L the padded length."""
    if name in ("aten.mm", "aten.bmm"):
        a, b = args[0], args[1]
        return 2.0 * math.prod(a.shape) * b.shape[-1]
    if name in ("aten.addmm", "aten.baddbmm"):
        a, b = args[1], args[2]
        return 2.0 * math.prod(a.shape) * b.shape[-1]
    if name in ("electra_fast.attention_qkv_forward", "electra_fast.attention_qkv_backward"):
        qkv = args[0] if name.endswith("forward") else args[1]
        batch, length, _, heads, dim = qkv.shape
        return (4.0 if name.endswith("forward") else 10.0) * batch * heads * length**2 * dim
    return 0.0


class Traffic(Counter):
    """Per op name: calls (every op, views too, counted by count_step_ops.Counter), and for the
    others bytes moved, FLOPs and the floor in seconds at `bandwidth` bytes/s and `peak`
    FLOP/s."""

    def __init__(self, bandwidth: float, peak: float):
        super().__init__()
        self.bandwidth, self.peak = bandwidth, peak
        self.bytes = collections.Counter()
        self.flops = collections.Counter()
        self.floor = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if func._opname not in VIEWS:
            name = f"{func.namespace}.{func._opname}"
            self.record(name, moved_bytes(func, args, kwargs or {}, out), matmul_flops(name, args))
        return out

    def record(self, name: str, moved: int, flops: float) -> None:
        self.bytes[name] += moved
        self.flops[name] += flops
        self.floor[name] += max(moved / self.bandwidth, flops / self.peak)

    def mm_float32_as_on_cuda(self, a, b, out=None):
        """_common.mm_float32 as CUDA runs it, one matmul that reads bf16 and writes float32
        (aten's mm.dtype, which has no CPU kernel); unrecorded, the CPU's float32 copies of
        both inputs would count: 0.6 GB and 2 casts per weight gradient at 128 x 128 tokens."""
        with _disable_current_modes():
            product = _common.mm_float32(a, b, out=out)
        self.calls["aten.mm"] += 1
        moved = a.nbytes + b.nbytes + product.nbytes
        self.record("aten.mm", moved, matmul_flops("aten.mm", (a, b)))
        return product


class LayerNormAsOnCuda(TorchFunctionMode):
    """Under CPU autocast, torch's layer_norm as CUDA autocast runs it: its input cast to float32
    (a kernel of its own on the GPU too), the output float32. CPU autocast would leave a
    bfloat16 input, and the output, in bfloat16."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.layer_norm and torch.is_autocast_enabled("cpu"):
            args = (args[0].float(), *args[1:])
        return func(*args, **kwargs)


@contextlib.contextmanager
def recorded_as_on_cuda(traffic: Traffic):
    """Within: the CPU calls the ops, in the dtypes, that CUDA would where autocast or our code
    treat the two devices differently, and `traffic` records the weight gradients' matmuls as
    CUDA runs them."""
    with contextlib.ExitStack() as stack:
        for module in (casts, sampling_linear):
            stack.enter_context(
                mock.patch.object(module, "mm_float32", traffic.mm_float32_as_on_cuda)
            )
        stack.enter_context(mock.patch.object(
            layer_norm, "autocast_to_float32", lambda x: torch.is_autocast_enabled(x.device.type)
        ))  # fmt: skip
        stack.enter_context(LayerNormAsOnCuda())
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128, help="sequences per step")
    parser.add_argument(
        "--length", type=int, default=LENGTH, help="tokens per sequence, at most 512"
    )
    parser.add_argument("--bandwidth", type=float, default=2953.0, help="memory GB/s")
    parser.add_argument("--tflops", type=float, default=989.0, help="matmul TFLOP/s")
    parser.add_argument("--top", type=int, default=20, help="list the ops with the most floor")
    args = parser.parse_args()
    if args.batch < 1 or args.bandwidth <= 0 or args.tflops <= 0 or args.top < 0:
        parser.error("--batch must be 1 or more, --bandwidth and --tflops above 0, --top 0 or more")
    if not 1 <= args.length <= 512:
        parser.error(f"--length must be in [1, 512] (ELECTRA-small's positions), got {args.length}")
    torch.manual_seed(0)
    traffic = Traffic(args.bandwidth * 1e9, args.tflops * 1e12)
    step = counted_step(bf16=True, batch=args.batch, length=args.length)
    with recorded_as_on_cuda(traffic):
        step(traffic)
    tokens = args.batch * args.length
    floor = sum(traffic.floor.values())
    moved, flops = sum(traffic.bytes.values()), sum(traffic.flops.values())
    print(f"ELECTRA-small step, {args.batch} x {args.length} tokens, bf16 autocast: "
          f"{moved / 1e9:.2f} GB moved, {flops / 1e12:.2f} TFLOP")  # fmt: skip
    print(f"floor at {args.bandwidth:.0f} GB/s and {args.tflops:.0f} TFLOP/s: {floor * 1e3:.2f} ms "
          f"per step, {tokens / floor / 1e6:.2f}M tokens/s at most")  # fmt: skip
    print("| op | calls | GB | TFLOP | floor ms | share |\n|---|---:|---:|---:|---:|---:|")
    for name, seconds in traffic.floor.most_common(args.top):
        print(f"| `{name}` | {traffic.calls[name]} | {traffic.bytes[name] / 1e9:.3f} "
              f"| {traffic.flops[name] / 1e12:.3f} | {seconds * 1e3:.3f} "
              f"| {seconds / floor:.1%} |")  # fmt: skip


if __name__ == "__main__":
    main()
