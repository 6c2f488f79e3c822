"""The finetuning loop: `electra-fast finetune --task T --model DIR --train F --eval F --out D`.

A pretrained discriminator (ours, an export of a pretraining run, or a Hugging Face
ElectraForPreTraining directory) gets a fresh task head and is trained with the official
recipe (finetuning.hparams, finetuning.optimization), then evaluated on the eval file and run
on the predict file (unlabelled, such as a benchmark's test set). OUT receives hparams.json
(the effective settings), metrics.jsonl (training losses and each evaluation),
eval_results.json, predictions.json (of the eval file), test_predictions.json (of the predict
file), and model/ (a Hugging Face checkpoint of the finetuned model with its tokenizer). Every
file is written whole or not at all.

With num_trials = N > 1 (the official setting of that name) the whole run is made N times from
the same checkpoint with seeds seed, seed + 1, ..., into OUT/trial_1 .. OUT/trial_N, and
OUT/eval_results.json holds every trial's scores with their mean, median, min and max: small
tasks such as RTE vary from seed to seed by points.

The GPUs of one machine (train_batch_size stays the global batch, split among them):
    torchrun --nproc-per-node 8 -m electra_fast.cli finetune --task squad --model M ...
Each rank trains on its share of every batch, and evaluates its share of the eval set; only
rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from electra_fast import amp, distributed, tokenization
from electra_fast._files import file_sha256, open_log, replace_directory, write_atomically
from electra_fast.finetuning.hparams import FinetuneHparams
from electra_fast.finetuning.metrics import summarize_trials
from electra_fast.finetuning.optimization import layerwise_groups
from electra_fast.finetuning.tasks import task_for
from electra_fast.model.config import ElectraConfig
from electra_fast.model.modeling import set_gradient_checkpointing
from electra_fast.pretraining.optimization import AdamWeightDecay, clip_divisor, learning_rate


def finetune(
    model: str | os.PathLike,
    train_file: str | os.PathLike | None,
    eval_file: str | os.PathLike | None,
    out: str | os.PathLike,
    hparams: FinetuneHparams,
    *,
    tokenizer: str | os.PathLike | None = None,
    progress: bool = True,
    device: str | None = None,
    predict_file: str | os.PathLike | None = None,
) -> dict:
    """Trains on `train_file` (if given), evaluates on `eval_file` (if given), predicts for
    `predict_file` (if given) and returns the evaluation's scores. Without `train_file`,
    `model` is one this function finetuned. `device`: "cuda" or "cpu" (default:
    $ELECTRA_FAST_DEVICE, else the GPU when there is one)."""
    if train_file is None and eval_file is None and predict_file is None:
        raise ValueError("give --train, --eval, --predict or several")
    given = {"--train": train_file, "--eval": eval_file, "--predict": predict_file}
    for flag, path in given.items():
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path} is not a file")
    if hparams.num_trials > 1:
        return _trials(model, train_file, eval_file, out, hparams, tokenizer=tokenizer,
                       progress=progress, device=device, predict_file=predict_file)  # fmt: skip
    out = Path(out)
    model_dir = Path(model)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"--model {model_dir} is not a directory")
    for inside in ("discriminator", "export/discriminator"):  # an export, or its run
        if (model_dir / inside).is_dir():
            model_dir = model_dir / inside
            break
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"--model {model_dir} holds no model (config.json): give a discriminator's "
            "directory, a pretraining run's export/ or the run itself"
        )
    tok = _tokenizer(tokenizer, model_dir)
    kind = distributed.device_type(device)
    rank, world = distributed.init(kind)
    device = distributed.device_for(rank, kind)
    if hparams.train_batch_size % world:
        raise ValueError(f"train_batch_size={hparams.train_batch_size} must be a multiple of "
                         f"the world size {world}")  # fmt: skip
    task = task_for(hparams.task)
    # Each machine reads its own copies of the files and the model: a rank that cannot stops
    # every rank, and copies that differ are an error (the ranks' shares would not add up).
    with distributed.together("reading the data and the model"):
        train = task.load(train_file, hparams) if train_file is not None else None
        resolved = hparams.resolved(ElectraConfig.load(model_dir).hidden_size)
        digests = _digests(train_file, eval_file, predict_file)
    distributed.same_everywhere("the data files' contents", digests)
    hparams = resolved
    torch.manual_seed(hparams.seed)  # the new head's initialisation, then dropout
    net = task.build(model_dir, hparams, train, train_file is None)
    net.to(device)
    set_gradient_checkpointing(net, hparams.gradient_checkpointing)
    main = rank == 0
    if main:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "hparams.json", hparams.to_dict())
    autocast = amp.autocast(hparams.precision, device)
    scores = {}
    with open_log(out / "metrics.jsonl") if main else nullcontext() as log:
        if train is not None:
            features = task.features(train, tok, hparams, training=True)
            if main:
                per_device = hparams.train_batch_size // world
                log.write(json.dumps({"world_size": world, "per_device_batch_size": per_device}))
                log.write("\n")
            _train(net, task, features, tok, hparams, device, autocast, log, progress and main)
        net.eval()
        if eval_file is not None:
            examples = task.load(eval_file, hparams)
            task.check_labels(examples, hparams)  # before the predictions, not after
            predictions = task.predict(net, examples, tok, hparams, device, autocast)
            scores = task.score(examples, predictions, hparams)
            if main:
                log.write(json.dumps({"eval": scores}) + "\n")
                _write_json(out / "eval_results.json", scores)
                _write_json(out / "predictions.json", predictions)
            if progress and main:
                print(f"eval: {json.dumps(scores)}", file=sys.stderr)
        if predict_file is not None:
            examples = task.load(predict_file, hparams)
            predictions = task.predict(net, examples, tok, hparams, device, autocast)
            if main:
                _write_json(out / "test_predictions.json", predictions)
    if train is not None and main:
        _save_model(net, tok, out / "model")
    if world > 1:
        dist.barrier()  # the ranks leave together, once rank 0 has written (see pretraining)
    return scores


def _trials(model, train_file, eval_file, out, hparams: FinetuneHparams, **options) -> dict:
    """num_trials finetunings into OUT/trial_<k>, seeds counting up from hparams.seed; returns
    (and writes to OUT/eval_results.json) summarize_trials of their scores."""
    if train_file is None:
        raise ValueError(f"num_trials={hparams.num_trials} needs --train: trials differ only "
                         "in their training")  # fmt: skip
    out = Path(out)
    scores = []
    for trial in range(1, hparams.num_trials + 1):
        one = dataclasses.replace(hparams, num_trials=1, seed=hparams.seed + trial - 1)
        scores.append(
            finetune(model, train_file, eval_file, out / f"trial_{trial}", one, **options)
        )
    if eval_file is None:
        return {}
    summary = summarize_trials(scores)
    if distributed.is_main():
        _write_json(out / "eval_results.json", summary)
        if options.get("progress", True):
            print(
                f"median of {len(scores)} trials: {json.dumps(summary['median'])}", file=sys.stderr
            )
    return summary


def _tokenizer(tokenizer, model_dir: Path):
    if tokenizer is not None:
        return tokenization.load(tokenizer)
    if (model_dir / tokenization.CONFIG).is_file():
        return tokenization.load(model_dir)
    raise ValueError(
        f"--tokenizer is needed: {model_dir} holds no tokenizer ({tokenization.CONFIG})"
    )


MAX_OVERFLOWS_IN_A_ROW = 10  # with fp16: the loss scale falls by 2^10 before the run stops


def _train(net, task, features, tok, hparams, device, autocast, log, progress) -> None:
    per_epoch = len(features) // hparams.train_batch_size
    if per_epoch == 0:
        raise ValueError(
            f"{len(features)} training features make no batch of "
            f"train_batch_size={hparams.train_batch_size}"
        )
    total = hparams.num_train_steps or max(1, int(per_epoch * hparams.num_train_epochs))
    warmup = total * hparams.warmup_proportion
    groups = layerwise_groups(net, hparams.weight_decay_rate, hparams.layerwise_lr_decay)
    optimizer = AdamWeightDecay(groups, lr=hparams.learning_rate)
    # Every rank draws the same order and takes its share of each batch.
    generator = torch.Generator().manual_seed(hparams.seed)
    forward = net
    if dist.is_initialized():
        # DDP gives every rank rank 0's head; dropout then differs between ranks.
        forward = DistributedDataParallel(
            net, device_ids=[device] if device.type == "cuda" else None
        )
        torch.manual_seed(hparams.seed + dist.get_rank())
    scaler = amp.grad_scaler(hparams.precision, device)
    skipped_in_a_row = skipped = 0
    net.train()
    order: list[int] = []
    started, running = time.time(), torch.zeros((), device=device)
    for step in range(total):
        if len(order) < hparams.train_batch_size:  # a new epoch; the remainder is dropped
            order = torch.randperm(len(features), generator=generator).tolist()
        rows, order = order[: hparams.train_batch_size], order[hparams.train_batch_size :]
        mine = distributed.share(rows)
        batch = {k: v.to(device) for k, v in task.collate([features[i] for i in mine], tok).items()}
        with autocast():
            loss = task.loss(net, forward, batch, hparams)
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.unscale_(optimizer)
        norm = optimizer.grad_norm()  # the update clips: grad_scale below
        # The norm of the averaged gradient is the same on every rank, so all of them stop
        # (or skip the step) together when any rank's loss is not finite.
        finite = bool(torch.isfinite(norm))
        skipped_in_a_row = 0 if finite else skipped_in_a_row + 1
        skipped += not finite
        # fp16's loss scale starts high and halves at each overflow, skipping that step; more
        # overflows in a row than that halving needs mean the loss itself is broken.
        if not finite and (scaler is None or skipped_in_a_row > MAX_OVERFLOWS_IN_A_ROW):
            raise FloatingPointError(f"the gradient norm is {norm.item()} at step {step + 1} "
                                     f"(this rank's loss: {loss.item()})")  # fmt: skip
        rate = learning_rate(step, hparams.learning_rate, warmup, total)
        for group in optimizer.param_groups:
            group["lr"] = rate * group["lr_scale"]
        clip = clip_divisor(norm, hparams.max_grad_norm)
        if scaler:
            # Skips the update when the gradients overflowed.
            scaler.step(optimizer, grad_scale=clip)
            scaler.update()
        else:
            optimizer.step(grad_scale=clip)
        running += loss.detach().float()
        if (step + 1) % hparams.log_steps == 0 or step + 1 == total:
            if dist.is_initialized():
                dist.all_reduce(running)
                running /= dist.get_world_size()
            done = (step + 1) % hparams.log_steps or hparams.log_steps
            record = {"step": step + 1, "loss": running.item() / done, "lr": rate,
                      "epoch": (step + 1) / per_epoch, "skipped_steps": skipped}  # fmt: skip
            running.zero_()
            if log is not None:
                log.write(json.dumps(record) + "\n")
                log.flush()
            if progress:
                rate_s = (step + 1) / (time.time() - started)
                print(f"step {step + 1}/{total} loss {record['loss']:.4f} "
                      f"({rate_s:.1f} steps/s)", file=sys.stderr)  # fmt: skip


def _write_json(path: Path, value) -> None:
    write_atomically(path, json.dumps(value, indent=1, ensure_ascii=False) + "\n")


def _save_model(net, tok, directory: Path) -> None:
    """Writes the model and its tokenizer; an interrupted save leaves the previous model whole."""

    def fill(staging: Path) -> None:
        net.save_pretrained(staging)
        tok.save(staging)

    replace_directory(directory, fill)


def _digests(*files) -> list[str | None]:
    """SHA-256 of each file given (None for one not given), to compare between machines."""
    return [file_sha256(f)[:16] if f is not None and Path(f).is_file() else None for f in files]


__all__ = ["finetune"]
