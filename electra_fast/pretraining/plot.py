"""`electra-fast plot RUN`: RUN/loss.png with the total, generator and discriminator losses and
the accuracies over the steps, from RUN/metrics.jsonl.

The discriminator's accuracy is drawn against what calling every token original would score,
1 - the replaced fraction: early in a run the two are close, and the baseline itself rises as
the generator's samples more often equal the original token. The discriminator's recall (the
share of replaced tokens it spots) shows its learning apart from that. Its precision is left to
metrics.jsonl: while it calls only a handful of tokens replaced, it jumps between 0 and 1."""

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
    curves = (("disc_acc", "discriminator accuracy", "-", float),
              ("replaced", "... of calling every token original", ":", lambda v: 1.0 - v),
              ("disc_recall", "discriminator recall", "-", float),
              ("mlm_acc", "MLM accuracy", "-", float))  # fmt: skip
    for key, label, style, value in curves:
        kept = [r for r in records if key in r]  # runs of older versions logged fewer keys
        if kept:
            accuracy.plot([r["step"] for r in kept], [value(r[key]) for r in kept], style,
                          label=label)  # fmt: skip
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
