"""The finetuning loop: `electra-fast finetune --task T --model DIR --train F --eval F --out D`.

A pretrained discriminator (ours, an export of a pretraining run, or a Hugging Face
ElectraForPreTraining directory) gets a fresh task head and is trained with the official
recipe (finetuning.hparams, finetuning.optimization), then evaluated on the eval file. OUT
receives hparams.json (the effective settings), metrics.jsonl (training losses and each
evaluation), eval_results.json, the predictions, and model/ (a Hugging Face checkpoint of the
finetuned model with its tokenizer). Every file is written whole or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from electra_fast import tokenization
from electra_fast.finetuning import classification, squad
from electra_fast.finetuning.hparams import FinetuneHparams
from electra_fast.finetuning.metrics import classification_scores, regression_scores, squad_scores
from electra_fast.finetuning.optimization import layerwise_groups
from electra_fast.model.config import ElectraConfig
from electra_fast.model.finetuning import (
    ElectraForQuestionAnswering,
    ElectraForSequenceClassification,
)
from electra_fast.pretraining.optimization import AdamWeightDecay, learning_rate


def finetune(
    model: str | os.PathLike,
    train_file: str | os.PathLike | None,
    eval_file: str | os.PathLike | None,
    out: str | os.PathLike,
    hparams: FinetuneHparams,
    *,
    tokenizer: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Trains on `train_file` (if given), evaluates on `eval_file` (if given) and returns the
    evaluation's scores."""
    if train_file is None and eval_file is None:
        raise ValueError("give --train, --eval or both")
    out = Path(out)
    model_dir = Path(model)
    if (model_dir / "discriminator").is_dir():
        model_dir = model_dir / "discriminator"
    tok = _tokenizer(tokenizer, model_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    task = _task(hparams.task)
    train = task.load(train_file, hparams) if train_file is not None else None
    torch.manual_seed(hparams.seed)  # the new head's initialisation, then dropout
    hparams = hparams.resolved(ElectraConfig.load(model_dir).hidden_size)
    net = task.build(model_dir, hparams, train, train_file is None)
    net.to(device)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "hparams.json", hparams.to_dict())
    autocast = _autocast(hparams, device)
    scores = {}
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as log:
        if train is not None:
            features = task.features(train, tok, hparams, training=True)
            _train(net, task, features, tok, hparams, device, autocast, log, progress)
        if eval_file is not None:
            examples = task.load(eval_file, hparams)
            net.eval()
            scores, predictions = task.evaluate(net, examples, tok, hparams, device, autocast)
            log.write(json.dumps({"eval": scores}) + "\n")
            _write_json(out / "eval_results.json", scores)
            _write_json(out / "predictions.json", predictions)
            if progress:
                print(f"eval: {json.dumps(scores)}", file=sys.stderr)
    if train is not None:
        _save_model(net, tok, out / "model")
    return scores


def _tokenizer(tokenizer, model_dir: Path):
    if tokenizer is not None:
        return tokenization.load(tokenizer)
    if (model_dir / tokenization.CONFIG).is_file():
        return tokenization.load(model_dir)
    raise ValueError(
        f"--tokenizer is needed: {model_dir} holds no tokenizer ({tokenization.CONFIG})"
    )


def _autocast(hparams: FinetuneHparams, device: torch.device):
    precision = hparams.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


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
    generator = torch.Generator().manual_seed(hparams.seed)
    net.train()
    order: list[int] = []
    started, running = time.time(), 0.0
    for step in range(total):
        if len(order) < hparams.train_batch_size:  # a new epoch; the remainder is dropped
            order = torch.randperm(len(features), generator=generator).tolist()
        rows, order = order[: hparams.train_batch_size], order[hparams.train_batch_size :]
        batch = {k: v.to(device) for k, v in task.collate([features[i] for i in rows], tok).items()}
        with autocast():
            loss = task.loss(net, batch, hparams)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss is {loss.item()} at step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), hparams.max_grad_norm)
        rate = learning_rate(step, hparams.learning_rate, warmup, total)
        for group in optimizer.param_groups:
            group["lr"] = rate * group["lr_scale"]
        optimizer.step()
        running += loss.item()
        if (step + 1) % hparams.log_steps == 0 or step + 1 == total:
            done = (step + 1) % hparams.log_steps or hparams.log_steps
            record = {"step": step + 1, "loss": running / done, "lr": rate,
                      "epoch": (step + 1) / per_epoch}  # fmt: skip
            log.write(json.dumps(record) + "\n")
            log.flush()
            running = 0.0
            if progress:
                rate_s = (step + 1) / (time.time() - started)
                print(f"step {step + 1}/{total} loss {record['loss']:.4f} "
                      f"({rate_s:.1f} steps/s)", file=sys.stderr)  # fmt: skip
    net.eval()


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


class _Classification:
    """classification and regression (hparams.task)."""

    def load(self, path, hparams):
        return classification.read_examples(path, text_field=hparams.text_field,
                                            pair_field=hparams.pair_field,
                                            label_field=hparams.label_field)  # fmt: skip

    def build(self, model_dir, hparams, train, finetuned):
        if finetuned:  # evaluation only: a model this command finetuned before
            net = ElectraForSequenceClassification.from_pretrained(model_dir)
        elif hparams.task == "regression":
            net = ElectraForSequenceClassification.from_discriminator(
                model_dir, regression=True, head=hparams.classification_head
            )
        else:
            labels = classification.label_vocabulary(train)
            net = ElectraForSequenceClassification.from_discriminator(
                model_dir, num_labels=len(labels), labels=labels,
                head=hparams.classification_head)  # fmt: skip
        self.labels = net.labels or [f"LABEL_{i}" for i in range(net.num_labels)]
        return net

    def features(self, examples, tok, hparams, training):
        rows = classification.encode(examples, tok, hparams.max_seq_length)
        return [(row, self._target(e, hparams)) for row, e in zip(rows, examples, strict=True)]

    def _target(self, example, hparams):
        if example.label is None:
            raise ValueError(f"an example has no {hparams.label_field!r}: {example.text[:50]!r}")
        if hparams.task == "regression":
            return float(example.label)
        names = self.labels or []
        if str(example.label) not in names:
            raise ValueError(f"label {example.label!r} is not one of the model's {names}")
        return names.index(str(example.label))

    def collate(self, items, tok):
        dtype = torch.float32 if isinstance(items[0][1], float) else torch.long
        labels = torch.tensor([target for _, target in items], dtype=dtype)
        return classification.collate([row for row, _ in items], labels, tok.pad_token_id)

    def loss(self, net, batch, hparams):
        labels = batch.pop("labels")
        return net.loss(net(**batch).float(), labels)

    @torch.no_grad()
    def evaluate(self, net, examples, tok, hparams, device, autocast):
        items = self.features(examples, tok, hparams, training=False)
        outputs = []
        for chunk in _batches(items, hparams.eval_batch_size):
            batch = {k: v.to(device) for k, v in self.collate(chunk, tok).items()}
            batch.pop("labels")
            with autocast():
                outputs.append(net(**batch).float().cpu())
        logits = torch.cat(outputs)
        targets = [target for _, target in items]
        if hparams.task == "regression":
            predicted = logits.squeeze(-1).tolist()
            return regression_scores(targets, predicted), predicted
        predicted = logits.argmax(-1).tolist()
        return classification_scores(targets, predicted), [self.labels[i] for i in predicted]


class _Squad:
    def load(self, path, hparams):
        return squad.read_squad(path)

    def build(self, model_dir, hparams, train, finetuned):
        if finetuned:
            return ElectraForQuestionAnswering.from_pretrained(model_dir)
        answerable = hparams.v2 and hparams.answerable_classifier
        return ElectraForQuestionAnswering.from_discriminator(model_dir, answerable=answerable)

    def features(self, examples, tok, hparams, training):
        features, stats = squad.make_features(
            examples, tok, max_seq_length=hparams.max_seq_length,
            max_query_length=hparams.max_query_length, doc_stride=hparams.doc_stride,
            training=training)  # fmt: skip
        if stats.skipped:
            print(f"{len(stats.skipped)} of {stats.examples} training answers were not found at "
                  f"their offsets and were skipped", file=sys.stderr)  # fmt: skip
        return features

    def collate(self, features, tok):
        return squad.collate(features, tok.pad_token_id, training=True)

    def loss(self, net, batch, hparams):
        targets = {k: batch.pop(k) for k in ("start_positions", "end_positions", "has_answer")}
        logits = net(**batch)
        start, end = logits.start.float(), logits.end.float()
        padding = batch["attention_mask"] == 0
        start, end = start.masked_fill(padding, -1e4), end.masked_fill(padding, -1e4)
        loss = (F.cross_entropy(start, targets["start_positions"])
                + F.cross_entropy(end, targets["end_positions"])) / 2  # fmt: skip
        if logits.answerable is not None:
            loss = loss + hparams.answerable_weight * F.binary_cross_entropy_with_logits(
                logits.answerable.float(), targets["has_answer"]
            )
        return loss

    @torch.no_grad()
    def evaluate(self, net, examples, tok, hparams, device, autocast):
        features = self.features(examples, tok, hparams, training=False)
        starts, ends, answerable = [], [], []
        for chunk in _batches(features, hparams.eval_batch_size):
            batch = squad.collate(chunk, tok.pad_token_id, training=False)
            with autocast():
                logits = net(**{k: v.to(device) for k, v in batch.items()})
            starts += logits.start.float().cpu().tolist()
            ends += logits.end.float().cpu().tolist()
            if logits.answerable is not None:
                answerable += logits.answerable.float().cpu().tolist()
        answers, null_odds = squad.predict(
            examples, features, starts, ends, answerable or None,
            n_best_size=hparams.n_best_size, max_answer_length=hparams.max_answer_length,
            allow_no_answer=hparams.v2, null_threshold=hparams.qa_na_threshold)  # fmt: skip
        golds = {e.qid: e.answers for e in examples}
        scores = squad_scores(golds, answers, hparams.f1_unit)
        if hparams.v2:
            return scores, {"answers": answers, "null_odds": null_odds}
        return scores, answers


def _task(name: str):
    return _Squad() if name == "squad" else _Classification()


def _write_json(path: Path, value) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _save_model(net, tok, directory: Path) -> None:
    """Writes the model and its tokenizer beside `directory`, then swaps it in, so that an
    interrupted save leaves the previous model whole."""
    staging = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    net.save_pretrained(staging)
    tok.save(staging)
    old = directory.with_name(f".{directory.name}.old")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(staging, directory)
    shutil.rmtree(old, ignore_errors=True)


__all__ = ["finetune"]
