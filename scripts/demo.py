"""`make demo`: the whole pipeline on the bundled English sample, in a few minutes on a CPU.

Trains a SentencePiece vocabulary, prepares the corpus, pretrains a tiny ELECTRA (ELECTRA-small
when a GPU is there) while showing the loss and the discriminator's accuracy, then plots the
run and exports the models. Everything goes under --out (default: $DEMO_DIR, else demo/);
rerunning resumes. --steps (default: $DEMO_STEPS, else 2,400 on a CPU, 3,000 on a GPU) sets the
length of the run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from electra_fast.data import prepare
from electra_fast.pretraining import Hparams
from electra_fast.pretraining.plot import plot_run
from electra_fast.pretraining.trainer import pretrain
from electra_fast.tokenization import load
from electra_fast.tokenization.sentencepiece import train_sentencepiece

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "samples" / "en.txt"
# On a CPU the discriminator first predicts every token original (its accuracy is then 1 - the
# replaced fraction) and only after about 1,400 steps starts to spot replacements: this model is
# small enough to get there within the demo's three minutes on two cores. A 128-wide, 3-layer
# one (and transformers' ELECTRA at the same sizes) still spotted none at step 400 or 690.
CPU_MODEL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 1,
             "intermediate_size": 256, "embedding_size": 64}  # fmt: skip


def positive(text: str) -> int:
    """A step count given as text: a whole number above 0."""
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"the number of steps must be a whole number above 0, "
                                         f"got {text!r}")  # fmt: skip
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("DEMO_DIR", "demo")),
                        help="where everything goes (default: $DEMO_DIR, else demo/)")  # fmt: skip
    parser.add_argument("--steps", type=positive, default=os.environ.get("DEMO_STEPS"),
                        help="pretraining steps (default: $DEMO_STEPS, else 2,400 on a CPU, "
                        "3,000 on a GPU)")  # fmt: skip
    arguments = parser.parse_args()
    out, steps = arguments.out, arguments.steps
    gpu = torch.cuda.is_available()
    if not (out / "tokenizer" / "tokenizer_config.json").is_file():
        print("1/4 training a 4,000-piece SentencePiece vocabulary on", SAMPLE, file=sys.stderr)
        lines = [x for x in SAMPLE.read_text(encoding="utf-8").splitlines() if x]
        train_sentencepiece(lines, out / "tokenizer", vocab_size=4000)
    if not (out / "data" / "manifest.json").is_file():
        print("2/4 preparing the corpus", file=sys.stderr)
        prepare([str(SAMPLE)], str(out / "tokenizer"), str(out / "data"), max_seq_length=128)
    print(f"\n3/4 pretraining on {'the GPU (ELECTRA-small)' if gpu else 'the CPU (a tiny model)'}",
          file=sys.stderr)  # fmt: skip
    hparams = Hparams(
        model_size="small",
        max_seq_length=128,
        train_batch_size=128 if gpu else 32,
        num_train_steps=steps or (3000 if gpu else 2400),
        num_warmup_steps=100 if gpu else 40,
        learning_rate=5e-4 if gpu else 1e-3,
        model_hparam_overrides={} if gpu else CPU_MODEL,
        save_checkpoints_steps=100,
        iterations_per_loop=20,
    )
    pretrain(out / "data", out / "run", hparams)
    print("4/4 plotting and exporting", file=sys.stderr)
    plot = plot_run(out / "run")
    tokenizer = load(out / "tokenizer")
    print(
        f"\nDone. Tokenizer ({tokenizer.vocab_size} pieces): {out / 'tokenizer'}\n"
        f"Dataset: {out / 'data'}\nRun (metrics.jsonl, checkpoints/): {out / 'run'}\n"
        f"Loss plot: {plot}\n"
        f"Hugging Face models: {out / 'run' / 'export'}/{{discriminator,generator}}"
    )


if __name__ == "__main__":
    main()
