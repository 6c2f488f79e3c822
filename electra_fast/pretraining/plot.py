"""`electra-fast plot RUN`: RUN/loss.png with the total, generator and discriminator losses and
the discriminator's accuracy over the steps, from RUN/metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path


def plot_run(run: str | Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from error
    run = Path(run)
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run}: is it a pretraining run?")
    lines = path.read_text().split("\n")[:-1]  # a last line without "\n" is still being written
    records = [json.loads(line) for line in lines if line.strip()]
    if not records:
        raise ValueError(f"{path} is empty: nothing to plot yet")
    records = list({r["step"]: r for r in records}.values())  # a resumed run logs steps again
    steps = [r["step"] for r in records]
    figure, (losses, accuracy) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("loss", "total"), ("gen_loss", "generator (MLM)"),
                       ("disc_loss", "discriminator")):  # fmt: skip
        losses.plot(steps, [r[key] for r in records], label=label)
    losses.set_yscale("log")
    losses.set_xlabel("step")
    losses.set_title("loss")
    losses.legend()
    accuracy.plot(steps, [r["disc_acc"] for r in records], label="discriminator accuracy")
    accuracy.plot(steps, [r["mlm_acc"] for r in records], label="MLM accuracy")
    accuracy.set_xlabel("step")
    accuracy.set_ylim(0, 1)
    accuracy.set_title("accuracy")
    accuracy.legend()
    figure.suptitle(run.name)
    figure.tight_layout()
    out = run / "loss.png"
    temporary = run / ".loss.png.tmp.png"
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    temporary.replace(out)
    return out
