"""How many ops one eager pretraining step of ELECTRA-small calls (forward, backward, clipping,
the skip flag and Adam), counted on the CPU under a dispatch mode: on a GPU each op that is not a
view is a kernel launch, and each op at all a trip through the dispatcher on the host. The count
does not depend on the batch size.

    python benchmarks/count_step_ops.py [--top 15] [--bf16]

--bf16 counts the step under CPU bf16 autocast, whose casts are those of CUDA autocast but for
LayerNorm's output (float32 on CUDA, bf16 on the CPU) and the weight gradients' matmuls (on CUDA
they write float32; on the CPU they multiply float32 copies of their bf16 operands: two casts
each that a GPU does not run).
"""

import argparse
import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from electra_fast import amp
from electra_fast.model import ElectraConfig, ElectraForPretraining
from electra_fast.model.pretraining import draw_keys
from electra_fast.pretraining.optimization import AdamWeightDecay, parameter_groups
from electra_fast.pretraining.skipping import SkipCounter
from electra_fast.pretraining.step import TrainStep

VIEWS = {"view", "_unsafe_view", "t", "transpose", "reshape", "expand", "permute", "unsqueeze",
         "squeeze", "select", "slice", "detach", "as_strided", "split", "split_with_sizes",
         "alias", "unbind", "unflatten", "flatten"}  # fmt: skip


LENGTH = 128  # tokens per sequence


class Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[f"{func.namespace}.{func._opname}"] += 1
        return func(*args, **(kwargs or {}))


def counted_step(bf16: bool, batch: int = 2, length: int = LENGTH):
    """ELECTRA-small's step as the loop runs it, at `batch` sequences of `length` tokens, as a
    function of a dispatch mode: it runs one step under the mode and returns how many ops each
    part called (the mode's `calls`). One step has run already: it allocates Adam's moments."""
    config = ElectraConfig.preset("small", vocab_size=30522, mask_token_id=103,
                                  special_token_ids=(0, 100, 101, 102))  # fmt: skip
    model = ElectraForPretraining(config)
    optimizer = AdamWeightDecay(parameter_groups(model, 0.01), lr=1e-4)
    train_step = TrainStep(model, optimizer, SkipCounter(torch.device("cpu"), limit=10),
                           max_grad_norm=1.0, autocast=amp.autocast(
                               "bf16" if bf16 else "fp32", torch.device("cpu")))  # fmt: skip
    batch = {"input_ids": torch.randint(1000, 30522, (batch, length))}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])

    def step(counter: TorchDispatchMode) -> dict[str, int]:
        parts = {}
        for part in ("forward and backward", "clip, flag, Adam"):
            with counter:
                if part == "forward and backward":
                    train_step.micro(batch, draw_keys("cpu"), metrics=False)
                else:
                    train_step.set_learning_rate(1e-4)
                    train_step.update()
            parts[part] = sum(counter.calls.values()) - sum(parts.values())
        return parts

    step(Counter())
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=15, help="list the most called ops")
    parser.add_argument("--bf16", action="store_true", help="under CPU bf16 autocast")
    args = parser.parse_args()
    counter = Counter()
    parts = counted_step(args.bf16)(counter)
    not_views = sum(n for op, n in counter.calls.items() if op.split(".")[1] not in VIEWS)
    print(", ".join(f"{part}: {n}" for part, n in parts.items()))
    print(f"{sum(parts.values())} ops in all, {not_views} of them not views")
    for op, n in counter.calls.most_common(args.top):
        print(f"  {n:5d} {op}")


if __name__ == "__main__":
    main()
