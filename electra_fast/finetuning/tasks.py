"""What each finetuning task adds to the loop in finetuning.trainer: reading its data (load),
the model with its head (build), training features and batches (features, collate), the loss,
predictions for a file, labelled or not (predict), and their scores against its labels
(score, once check_labels has found them usable)."""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F

from electra_fast import distributed
from electra_fast.finetuning import classification, squad, tagging
from electra_fast.finetuning.metrics import (
    best_thresholds,
    classification_scores,
    regression_scores,
    span_scores,
    squad_scores,
    word_accuracy,
)
from electra_fast.model.finetuning import (
    ElectraForQuestionAnswering,
    ElectraForSequenceClassification,
    ElectraForTokenClassification,
    label_names,
)


def _each(items: list, size: int, run) -> list:
    """`run(batch)` gives one result per item of a batch; this rank runs it over its share of
    `items`, `size` at a time, and gets every rank's results back in the order of `items`."""
    mine, results = distributed.share(items), []
    for i in range(0, len(mine), size):
        results += run(mine[i : i + size])
    return distributed.gather(results, len(items))


def _note(message: str) -> None:
    if distributed.is_main():
        print(message, file=sys.stderr)


class ClassificationTask:
    """Classification and regression (hparams.task) of a text or a pair, from [CLS]."""

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
        self.labels = label_names(net.labels, net.num_labels)
        return net

    def features(self, examples, tok, hparams, training):
        rows = classification.encode(examples, tok, hparams.max_seq_length)
        return [(row, self._target(e, hparams)) for row, e in zip(rows, examples, strict=True)]

    def _target(self, example, hparams):
        if example.label is None:
            raise ValueError(f"an example has no {hparams.label_field!r}: {example.text[:50]!r}")
        if hparams.task == "regression":
            try:
                target = float(example.label)
            except (TypeError, ValueError):
                target = math.nan
            if not math.isfinite(target):
                raise ValueError(f"regression needs a finite number as {hparams.label_field!r}, "
                                 f"got {example.label!r} for {example.text[:50]!r}")  # fmt: skip
            return target
        if str(example.label) not in self.labels:
            raise ValueError(f"label {example.label!r} is not one of the model's {self.labels}")
        return self.labels.index(str(example.label))

    def collate(self, items, tok):
        dtype = torch.float32 if isinstance(items[0][1], float) else torch.long
        labels = torch.tensor([target for _, target in items], dtype=dtype)
        return classification.collate([row for row, _ in items], labels, tok.pad_token_id)

    def loss(self, net, forward, batch, hparams):
        labels = batch.pop("labels")
        return net.loss(forward(**batch).float(), labels)

    @torch.no_grad()
    def predict(self, net, examples, tok, hparams, device, autocast):
        rows = classification.encode(examples, tok, hparams.max_seq_length)

        def run(chunk):
            batch = classification.collate(chunk, None, tok.pad_token_id)
            with autocast():
                return net(**{k: v.to(device) for k, v in batch.items()}).float().cpu().tolist()

        logits = torch.tensor(_each(rows, hparams.eval_batch_size, run))
        if hparams.task == "regression":
            return logits.squeeze(-1).tolist()
        return [self.labels[i] for i in logits.argmax(-1).tolist()]

    def check_labels(self, examples, hparams):
        for example in examples:
            self._target(example, hparams)

    def score(self, examples, predictions, hparams):
        targets = [self._target(e, hparams) for e in examples]
        if hparams.task == "regression":
            return regression_scores(targets, predictions)
        return classification_scores(targets, [self.labels.index(p) for p in predictions])


class SquadTask:
    """SQuAD-style extractive question answering (v1.1, and v2.0 with hparams.v2)."""

    def load(self, path, hparams):
        return squad.read_squad(path)

    def build(self, model_dir, hparams, train, finetuned):
        if finetuned:
            return ElectraForQuestionAnswering.from_pretrained(model_dir)
        answerable = hparams.v2 and hparams.answerable_classifier
        return ElectraForQuestionAnswering.from_discriminator(
            model_dir, answerable=answerable, joint=hparams.joint_prediction
        )

    def features(self, examples, tok, hparams, training):
        features, stats = squad.make_features(
            examples, tok, max_seq_length=hparams.max_seq_length,
            max_query_length=hparams.max_query_length, doc_stride=hparams.doc_stride,
            training=training)  # fmt: skip
        if stats.skipped:
            _note(
                f"{len(stats.skipped)} of {stats.examples} training answers were not found at "
                "their offsets and were skipped"
            )
        return features

    def collate(self, features, tok):
        return squad.collate(features, tok.pad_token_id, training=True)

    def loss(self, net, forward, batch, hparams):
        targets = {k: batch.pop(k) for k in ("end_positions", "has_answer")}
        starts = batch.pop("start_positions")
        # The joint head's end logits are those given the gold start, as officially.
        logits = forward(**batch, start_positions=starts) if net.joint else forward(**batch)
        loss = (F.cross_entropy(logits.start.float(), starts)
                + F.cross_entropy(logits.end.float(), targets["end_positions"])) / 2  # fmt: skip
        if logits.answerable is not None:
            loss = loss + hparams.answerable_weight * F.binary_cross_entropy_with_logits(
                logits.answerable.float(), targets["has_answer"]
            )
        return loss

    @torch.no_grad()
    def predict(self, net, examples, tok, hparams, device, autocast):
        """The answers; for SQuAD 2.0 also each question's best non-empty answer and its null
        odds, which the score's search for the best threshold needs."""
        if not examples:
            raise ValueError("the file has no questions")
        features = self.features(examples, tok, hparams, training=False)

        def run(chunk):
            batch = {k: v.to(device) for k, v in
                     squad.collate(chunk, tok.pad_token_id, training=False).items()}  # fmt: skip
            with autocast():
                if net.joint:
                    result = net.beam_search(**batch, beam=hparams.beam_size)
                else:
                    result = net(**batch)
            rows = [x.float().cpu().tolist() if x.is_floating_point() else x.cpu().tolist()
                    for x in result[:-1]]  # fmt: skip
            answerable = [None] * len(chunk)
            if result.answerable is not None:
                answerable = result.answerable.float().cpu().tolist()
            return list(zip(zip(*rows, strict=True), answerable, strict=True))

        outputs, answerable = zip(*_each(features, hparams.eval_batch_size, run), strict=True)
        answerable = None if answerable[0] is None else list(answerable)
        # The best non-empty answers first; SQuAD 2.0's threshold comes after, as officially,
        # so that the evaluation can also search for the best threshold.
        longest = hparams.max_answer_length
        if net.joint:
            found, null_odds = squad.predict_joint(
                examples, features, outputs, answerable, max_answer_length=longest
            )
        else:
            starts, ends = zip(*outputs, strict=True)
            found, null_odds = squad.predict(examples, features, starts, ends, answerable,
                                             n_best_size=hparams.n_best_size,
                                             max_answer_length=longest)  # fmt: skip
        if not hparams.v2:
            return found
        answers = squad.abstain(found, null_odds, hparams.qa_na_threshold)
        return {"answers": answers, "best_non_null": found, "null_odds": null_odds}

    def check_labels(self, examples, hparams):
        pass  # a question without answers is an unanswerable one

    def score(self, examples, predictions, hparams):
        golds = {e.qid: e.answers for e in examples}
        if not hparams.v2:
            return squad_scores(golds, predictions, hparams.f1_unit)
        scores = squad_scores(golds, predictions["answers"], hparams.f1_unit)
        scores.update(best_thresholds(golds, predictions["best_non_null"],
                                      predictions["null_odds"], hparams.f1_unit))  # fmt: skip
        return scores


class TaggingTask:
    """A tag per word (named entities, chunks, parts of speech), scored by spans or words."""

    def load(self, path, hparams):
        return tagging.read_tagged(path)

    def build(self, model_dir, hparams, train, finetuned):
        if finetuned:
            net = ElectraForTokenClassification.from_pretrained(model_dir)
            self.level = hparams.tagging_level or ("span" if net.span_tags else "token")
        else:
            self.level = hparams.tagging_level or tagging.detect_level(train)
            labels = tagging.label_vocabulary(train, self.level)
            net = ElectraForTokenClassification.from_discriminator(
                model_dir, num_labels=len(labels), labels=labels, span_tags=self.level == "span"
            )
        self.labels = label_names(net.labels, net.num_labels)
        return net

    def features(self, sentences, tok, hparams, training):
        features = tagging.encode(sentences, tok, hparams.max_seq_length)
        if not training:
            return features
        index = {name: i for i, name in enumerate(self.labels)}
        for sentence in sentences:
            if sentence.tags is None:
                raise ValueError(
                    f"a training sentence has no tags: {' '.join(sentence.words)[:50]!r}"
                )
        targets = [[index[t] for t in tagging.training_tags(s, self.level)] for s in sentences]
        return list(zip(features, targets, strict=True))

    def collate(self, items, tok):
        features, targets = zip(*items, strict=True)
        return tagging.collate(list(features), list(targets), tok.pad_token_id)

    def loss(self, net, forward, batch, hparams):
        labels = batch.pop("labels")
        return net.loss(forward(**batch).float(), labels)

    @torch.no_grad()
    def predict(self, net, sentences, tok, hparams, device, autocast):
        """Each sentence's words and predicted tags (with spans, at the span level). Words past
        max_seq_length are tagged O; a sentence that had some says how many (truncated)."""
        features = self.features(sentences, tok, hparams, training=False)

        def run(chunk):
            batch = tagging.collate(chunk, None, tok.pad_token_id)
            with autocast():
                classes = net(**{k: v.to(device) for k, v in batch.items()}).argmax(-1).cpu()
            return [[self.labels[c] for c in classes[row, feature.positions].tolist()]
                    for row, feature in enumerate(chunk)]  # fmt: skip

        outputs, cut = [], 0
        for tags, sentence in zip(_each(features, hparams.eval_batch_size, run), sentences,
                                  strict=True):  # fmt: skip
            missing = len(sentence.words) - len(tags)
            output = {"words": sentence.words, "tags": tags + ["O"] * missing}
            if self.level == "span":
                output["spans"] = [list(span) for span in tagging.span_labels(output["tags"])]
            if missing:
                output["truncated"] = missing
                cut += missing
            outputs.append(output)
        if cut:
            _note(
                f"{cut} words lay past max_seq_length={hparams.max_seq_length} and were predicted O"
            )
        return outputs

    def check_labels(self, sentences, hparams):
        if any(s.tags is None for s in sentences):
            raise ValueError("the evaluation sentences need tags to be scored")
        if self.level == "span":
            tagging.check_span_tags(t for s in sentences for t in s.tags)

    def score(self, sentences, predictions, hparams):
        golds = [s.tags for s in sentences]
        predicted = [p["tags"] for p in predictions]
        if self.level == "span":
            scores = span_scores(golds, predicted)
        else:
            scores = word_accuracy(golds, predicted)
        scores["truncated_words"] = sum(p.get("truncated", 0) for p in predictions)
        return scores


def task_for(name: str):
    """The task adapter of FinetuneHparams.task."""
    return {"squad": SquadTask, "tagging": TaggingTask}.get(name, ClassificationTask)()
