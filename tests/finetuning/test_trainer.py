"""finetune() and `electra-fast finetune` end to end on tiny models: tasks a small encoder
learns in a few hundred CPU steps, the files a run writes, evaluation of a saved model,
Hugging Face loading of the result, and bad input."""

import dataclasses
import json
import random
import shutil

import pytest
import torch

from electra_fast import cli, tokenization
from electra_fast.finetuning import FinetuneHparams, finetune, squad
from electra_fast.finetuning.metrics import squad_scores
from electra_fast.model import ElectraForQuestionAnswering
from tests.finetuning.cases import pretrained_discriminator
from tests.model.test_modeling import count_recomputed_layers

pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    return pretrained_discriminator(tmp_path_factory.mktemp("pretrained"))


def squad_file(path, n, seed, impossible=0.0):
    """Questions whose answer is the run of 1-3 words from w1 .. w9 somewhere in a context of
    10-60 words from w10 .. w199; with `impossible`, that share of contexts has no such run."""
    rng = random.Random(seed)
    data = []
    for i in range(n):
        words = [f"w{rng.randrange(10, 200)}" for _ in range(rng.randint(10, 60))]
        qa = {"id": f"{seed}-{i}", "question": "w0"}
        if rng.random() < impossible:
            qa.update(answers=[], is_impossible=True)
        else:
            at = rng.randrange(len(words) + 1)
            answer = [f"w{rng.randrange(1, 10)}" for _ in range(rng.randint(1, 3))]
            words[at:at] = answer
            start = len(" ".join(words[:at])) + (1 if at else 0)
            qa["answers"] = [{"text": " ".join(answer), "answer_start": start}]
        data.append({"paragraphs": [{"context": " ".join(words), "qas": [qa]}]})
    path.write_text(json.dumps({"data": data}))
    return path


QA = dict(task="squad", max_seq_length=48, max_query_length=4, doc_stride=16,
          train_batch_size=16, learning_rate=2e-3, num_train_epochs=12, log_steps=20)  # fmt: skip


def test_squad_finetuning_learns_and_writes_a_loadable_model(pretrained, tmp_path):
    model, tokenizer = pretrained
    train = squad_file(tmp_path / "train.json", 300, seed=1)
    dev = squad_file(tmp_path / "dev.json", 60, seed=2)
    out = tmp_path / "out"
    scores = finetune(model, train, dev, out, FinetuneHparams(**QA), tokenizer=tokenizer,
                      progress=False)  # fmt: skip
    # A random span would rarely be the answer; the model learns which words make it.
    assert scores["exact"] >= 45 and scores["f1"] >= 75, scores
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < losses[0] / 2
    assert log[-1]["eval"] == scores == json.loads((out / "eval_results.json").read_text())
    predictions = json.loads((out / "predictions.json").read_text())
    assert len(predictions) == 60 and all(p.startswith("w") for p in predictions.values())
    assert json.loads((out / "hparams.json").read_text())["layerwise_lr_decay"] == 0.8
    # The saved model and tokenizer evaluate to the same scores on their own.
    data = json.loads(dev.read_text())
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                del qa["answers"]  # a test set's questions
    test = tmp_path / "test.json"
    test.write_text(json.dumps(data))
    again = finetune(out / "model", None, dev, tmp_path / "eval", FinetuneHparams(**QA),
                     progress=False, predict_file=test)  # fmt: skip
    assert again == scores
    assert json.loads((tmp_path / "eval" / "test_predictions.json").read_text()) == predictions
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["electra_fast_joint"] is True  # the official joint head by default


def test_squad_v2_with_the_answerable_classifier(pretrained, tmp_path):
    model, tokenizer = pretrained
    train = squad_file(tmp_path / "train.json", 300, seed=3, impossible=0.3)
    dev = squad_file(tmp_path / "dev.json", 60, seed=4, impossible=0.3)
    # Hugging Face's independent start and end head here, for transformers to load.
    hparams = FinetuneHparams(**QA, v2=True, joint_prediction=False)
    scores = finetune(model, train, dev, tmp_path / "out", hparams, tokenizer=tokenizer,
                      progress=False)  # fmt: skip
    assert scores["NoAns_total"] > 5 and scores["HasAns_total"] > 5
    # Always answering "" would score NoAns 100 and HasAns 0: both kinds must be mostly right.
    assert scores["NoAns_exact"] >= 70 and scores["HasAns_f1"] >= 60, scores
    predictions = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert set(predictions) == {"answers", "best_non_null", "null_odds"}
    # The search for the best threshold can only match or beat the one used.
    # (Up to rounding: the two sum the same scores in different orders.)
    assert scores["best_f1"] >= scores["f1"] - 1e-9
    assert scores["best_exact"] >= scores["exact"] - 1e-9
    answered = {q: "" if predictions["null_odds"][q] > scores["best_f1_thresh"] else text
                for q, text in predictions["best_non_null"].items()}  # fmt: skip
    golds = {e.qid: e.answers for e in squad.read_squad(dev)}
    assert squad_scores(golds, answered)["f1"] == pytest.approx(scores["best_f1"])
    config = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert config["electra_fast_answerable"] is True and config["electra_fast_joint"] is False
    transformers = pytest.importorskip("transformers")
    hf = transformers.ElectraForQuestionAnswering.from_pretrained(tmp_path / "out" / "model")
    ours = ElectraForQuestionAnswering.from_pretrained(tmp_path / "out" / "model")
    assert torch.equal(hf.qa_outputs.weight, ours.qa_outputs.weight)


def classification_file(path, n, seed):
    """Three classes, told by which of w1, w2, w3 a sentence of other words contains."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            label = rng.choice(["pos", "neg", "mid"])
            words = [f"w{rng.randrange(10, 200)}" for _ in range(rng.randint(2, 12))]
            words.insert(
                rng.randrange(len(words) + 1), {"pos": "w1", "neg": "w2", "mid": "w3"}[label]
            )
            f.write(json.dumps({"sentence": " ".join(words), "y": label}) + "\n")
    return path


def test_classification_through_the_command_line(pretrained, tmp_path, capsys):
    model, tokenizer = pretrained
    train = classification_file(tmp_path / "train.jsonl", 400, seed=5)
    dev = classification_file(tmp_path / "dev.jsonl", 100, seed=6)
    hparams = dict(text_field="sentence", label_field="y", max_seq_length=16,
                   train_batch_size=16, learning_rate=2e-3, num_train_epochs=4)  # fmt: skip
    # The dev texts again, without their labels, as a test set.
    rows = [json.loads(line) for line in dev.read_text().splitlines()]
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"sentence": r["sentence"]}) + "\n" for r in rows))
    code = cli.main(["finetune", "--task", "classification", "--model", str(model),
                     "--train", str(train), "--eval", str(dev), "--out", str(tmp_path / "out"),
                     "--tokenizer", str(tokenizer), "--hparams", json.dumps(hparams),
                     "--predict", str(test)])  # fmt: skip
    assert code == 0
    scores = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert scores["accuracy"] >= 0.9, scores  # chance: 1/3
    predictions = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert set(predictions) == {"mid", "neg", "pos"} and len(predictions) == 100
    assert json.loads((tmp_path / "out" / "test_predictions.json").read_text()) == predictions
    config = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "mid", "1": "neg", "2": "pos"}
    assert "finetuned model and results" in capsys.readouterr().out


def test_trials_differ_by_seed_and_are_summarised(pretrained, tmp_path, capsys):
    """num_trials=2: two runs from the same checkpoint with seeds 3 and 4, each a whole run
    directory, and their scores summarised."""
    model, tokenizer = pretrained
    train = classification_file(tmp_path / "train.jsonl", 64, seed=5)
    dev = classification_file(tmp_path / "dev.jsonl", 40, seed=6)
    hparams = dict(text_field="sentence", label_field="y", max_seq_length=16, seed=3,
                   train_batch_size=16, learning_rate=2e-3, num_train_steps=4,
                   num_trials=2)  # fmt: skip
    code = cli.main(["finetune", "--task", "classification", "--model", str(model),
                     "--train", str(train), "--eval", str(dev), "--out", str(tmp_path / "out"),
                     "--tokenizer", str(tokenizer), "--hparams", json.dumps(hparams)])  # fmt: skip
    assert code == 0
    out = tmp_path / "out"
    trials = []
    for k, seed in ((1, 3), (2, 4)):
        run = out / f"trial_{k}"
        assert json.loads((run / "hparams.json").read_text())["seed"] == seed
        assert (run / "model" / "config.json").is_file() and (run / "predictions.json").is_file()
        trials.append(json.loads((run / "eval_results.json").read_text()))
    summary = json.loads((out / "eval_results.json").read_text())
    assert summary["trials"] == trials
    for name in trials[0]:
        assert summary["median"][name] == pytest.approx((trials[0][name] + trials[1][name]) / 2)
    # Different seeds, different heads: the two finetuned classifiers differ.
    heads = [_classifier_weights(out / f"trial_{k}" / "model") for k in (1, 2)]
    assert not torch.equal(heads[0], heads[1])
    assert "median of 2 trials" in capsys.readouterr().err


def _classifier_weights(model_dir):
    from safetensors.torch import load_file

    weights = load_file(model_dir / "model.safetensors")
    return next(w for name, w in weights.items() if "classifier" in name and "weight" in name)


def test_regression(pretrained, tmp_path):
    model, tokenizer = pretrained
    rng = random.Random(7)
    for name, n in (("train", 300), ("dev", 60)):
        with open(tmp_path / f"{name}.tsv", "w") as f:
            f.write("a\tb\tscore\n")
            for _ in range(n):
                k = rng.randint(0, 5)  # the score counts the w1s in the pair
                words = ["w1"] * k + [f"w{rng.randrange(10, 200)}" for _ in range(6 - k)]
                rng.shuffle(words)
                f.write(f"{' '.join(words[:3])}\t{' '.join(words[3:])}\t{k}\n")
    hparams = FinetuneHparams(task="regression", text_field="a", pair_field="b",
                              label_field="score", max_seq_length=16, train_batch_size=16,
                              learning_rate=2e-3, num_train_epochs=6)  # fmt: skip
    scores = finetune(model, tmp_path / "train.tsv", tmp_path / "dev.tsv", tmp_path / "out",
                      hparams, tokenizer=tokenizer, progress=False)  # fmt: skip
    assert scores["pearson"] >= 0.8, scores
    for score in ("high", "nan"):
        (tmp_path / "bad.tsv").write_text(f"a\tb\tscore\nw1\tw2\t{score}\n")
        with pytest.raises(ValueError, match=f"finite number as 'score', got '{score}'"):
            finetune(model, tmp_path / "bad.tsv", None, tmp_path / "bad", hparams,
                     tokenizer=tokenizer, progress=False)  # fmt: skip


def test_a_pretraining_run_directory_stands_for_its_export(pretrained, tmp_path):
    from safetensors.torch import load_file

    model, tokenizer = pretrained
    exported = tmp_path / "run" / "export" / "discriminator"
    shutil.copytree(model, exported)
    tokenization.load(tokenizer).save(exported)  # an export carries its tokenizer
    train = classification_file(tmp_path / "train.jsonl", 40, seed=9)
    settings = FinetuneHparams(text_field="sentence", label_field="y", num_train_steps=3,
                               train_batch_size=8, max_seq_length=16)  # fmt: skip
    for given in (tmp_path / "run", exported):
        finetune(given, train, None, tmp_path / given.name, settings, progress=False)
    from_run = load_file(tmp_path / "run" / "model" / "model.safetensors")
    from_export = load_file(tmp_path / "discriminator" / "model" / "model.safetensors")
    assert from_run.keys() == from_export.keys()
    assert all(torch.equal(from_run[k], from_export[k]) for k in from_run)
    with pytest.raises(FileNotFoundError, match="--model .*tok.* holds no model \\(config.json\\)"):
        finetune(tokenizer, train, None, tmp_path / "o", settings)


def test_bad_input_is_named(pretrained, tmp_path, capsys):
    model, tokenizer = pretrained
    train = classification_file(tmp_path / "train.jsonl", 40, seed=8)
    with pytest.raises(ValueError, match="--tokenizer is needed"):
        finetune(model, train, None, tmp_path / "o", FinetuneHparams(text_field="sentence"))
    with pytest.raises(FileNotFoundError, match="--model .*missing is not a directory"):
        finetune(tmp_path / "missing", train, None, tmp_path / "o", FinetuneHparams())
    with pytest.raises(ValueError, match="give --train, --eval, --predict or several"):
        finetune(model, None, None, tmp_path / "o", FinetuneHparams())
    for position, flag in enumerate(("--train", "--eval", "--predict")):
        files = [train, None, None]
        files[position] = tmp_path / "gone.jsonl"
        with pytest.raises(FileNotFoundError, match=f"^{flag} .*gone.jsonl is not a file$"):
            finetune(model, files[0], files[1], tmp_path / "o", FinetuneHparams(),
                     predict_file=files[2])  # fmt: skip
    with pytest.raises(ValueError, match="num_trials=3 needs --train"):
        finetune(model, None, train, tmp_path / "o", FinetuneHparams(num_trials=3))
    with pytest.raises(ValueError, match="num_trials must be positive, got 0"):
        FinetuneHparams(num_trials=0)
    with pytest.raises(ValueError, match="hparams v2 must be true or false, got 1"):
        FinetuneHparams.from_json('{"v2": 1}')
    with pytest.raises(ValueError, match="hparams num_train_epochs must be a number or null"):
        FinetuneHparams.from_json('{"num_train_epochs": "3"}')
    with pytest.raises(ValueError, match="make no batch of train_batch_size=64"):
        finetune(model, train, None, tmp_path / "o", tokenizer=tokenizer, progress=False,
                 hparams=FinetuneHparams(text_field="sentence", label_field="y",
                                         train_batch_size=64))  # fmt: skip
    code = cli.main(["finetune", "--task", "squad", "--model", str(model), "--out", "o",
                     "--eval", str(train), "--hparams", '{"epochs": 2}'])  # fmt: skip
    assert code == 2 and "unknown hparams ['epochs']" in capsys.readouterr().err


def test_an_unlabelled_eval_file_is_refused_before_predicting(pretrained, tmp_path, monkeypatch):
    from electra_fast.finetuning.tasks import ClassificationTask

    model, tokenizer = pretrained
    train = classification_file(tmp_path / "train.jsonl", 40, seed=9)
    unlabelled = tmp_path / "dev.jsonl"
    unlabelled.write_text(json.dumps({"sentence": "w10 w11"}) + "\n")

    def predict(*args):
        raise AssertionError("predicted before the labels were checked")

    monkeypatch.setattr(ClassificationTask, "predict", predict)
    hparams = FinetuneHparams(text_field="sentence", label_field="y", train_batch_size=8,
                              num_train_steps=1, max_seq_length=16)  # fmt: skip
    with pytest.raises(ValueError, match="an example has no 'y'"):
        finetune(model, train, unlabelled, tmp_path / "out", hparams, tokenizer=tokenizer,
                 progress=False)  # fmt: skip


def test_a_non_finite_loss_stops_the_run_before_the_update(pretrained, tmp_path, monkeypatch):
    from electra_fast.finetuning.tasks import ClassificationTask

    model, tokenizer = pretrained
    train = classification_file(tmp_path / "train.jsonl", 40, seed=9)
    real = ClassificationTask.loss
    monkeypatch.setattr(ClassificationTask, "loss",
                        lambda *args: real(*args) * float("nan"))  # fmt: skip
    hparams = FinetuneHparams(text_field="sentence", label_field="y", train_batch_size=8,
                              num_train_steps=2, max_seq_length=16)  # fmt: skip
    with pytest.raises(FloatingPointError, match="gradient norm is nan at step 1"):
        finetune(model, train, None, tmp_path / "out", hparams, tokenizer=tokenizer,
                 progress=False)  # fmt: skip
    assert not (tmp_path / "out" / "model").exists()


def test_fp16_skips_overflowing_steps_and_stops_on_a_broken_loss(pretrained, tmp_path, monkeypatch):
    """fp16 with loss scaling on the CPU: steps whose scaled gradients overflow are skipped while
    the scale halves (from 2^16, where this model's first step overflows), and the run trains.
    A loss that is NaN at every step is skipped MAX_OVERFLOWS_IN_A_ROW times, then stops the
    run."""
    from electra_fast.finetuning import trainer
    from electra_fast.finetuning.tasks import ClassificationTask

    model, tokenizer = pretrained
    train = classification_file(tmp_path / "train.jsonl", 64, seed=9)
    hparams = FinetuneHparams(text_field="sentence", label_field="y", train_batch_size=8,
                              num_train_steps=8, max_seq_length=16, precision="fp16",
                              learning_rate=2e-3)  # fmt: skip
    finetune(model, train, train, tmp_path / "ok", hparams, tokenizer=tokenizer, progress=False)
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "ok" / "model" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    before = load_file(model / "model.safetensors")
    shared = [k for k in weights if k in before]
    assert shared and any(not torch.equal(weights[k], before[k]) for k in shared)  # it trained
    log = [json.loads(x) for x in (tmp_path / "ok" / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in log if "step" in r][-1]["skipped_steps"] < 8  # here the first overflows

    real = ClassificationTask.loss
    monkeypatch.setattr(ClassificationTask, "loss",
                        lambda *args: real(*args) * float("nan"))  # fmt: skip
    stop = trainer.MAX_OVERFLOWS_IN_A_ROW + 1
    hparams = dataclasses.replace(hparams, num_train_steps=stop + 5)
    with pytest.raises(FloatingPointError, match=f"gradient norm is nan at step {stop} "):
        finetune(model, train, None, tmp_path / "out", hparams, tokenizer=tokenizer,
                 progress=False)  # fmt: skip


def test_an_interrupted_save_keeps_the_previous_model(pretrained, tmp_path, monkeypatch):
    from electra_fast.model.finetuning import ElectraForSequenceClassification

    model, tokenizer = pretrained
    train = classification_file(tmp_path / "train.jsonl", 40, seed=9)
    hparams = FinetuneHparams(text_field="sentence", label_field="y", train_batch_size=8,
                              num_train_steps=2, max_seq_length=16)  # fmt: skip
    finetune(model, train, None, tmp_path / "out", hparams, tokenizer=tokenizer, progress=False)
    before = (tmp_path / "out" / "model" / "model.safetensors").read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ElectraForSequenceClassification, "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        finetune(model, train, None, tmp_path / "out", hparams.__class__(**{**hparams.to_dict(),
                 "seed": 1}), tokenizer=tokenizer, progress=False)  # fmt: skip
    assert (tmp_path / "out" / "model" / "model.safetensors").read_bytes() == before
    assert (tmp_path / "out" / "model" / "config.json").is_file()


def ner_file(path, n, seed):
    """CoNLL sentences of filler words w10 .. w199 with 1-3 runs of 1-3 entity words, tagged
    BIO: PER for words from w1 .. w4, LOC for w5 .. w9, so that B- and I- are told apart only
    by the word before."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(1, 3)):
            for _ in range(rng.randint(1, 4)):
                words.append(f"w{rng.randrange(10, 200)}")
                tags.append("O")
            kind = rng.choice(["PER", "LOC"])
            low, high = (1, 5) if kind == "PER" else (5, 10)
            for i in range(rng.randint(1, 3)):
                words.append(f"w{rng.randrange(low, high)}")
                tags.append(f"{'B' if i == 0 else 'I'}-{kind}")
        lines += [f"{w} {t}" for w, t in zip(words, tags, strict=True)] + [""]
    path.write_text("\n".join(lines))
    return path


def test_tagging_learns_entity_spans(pretrained, tmp_path):
    model, tokenizer = pretrained
    train = ner_file(tmp_path / "train.txt", 300, seed=10)
    dev = ner_file(tmp_path / "dev.txt", 60, seed=11)
    hparams = FinetuneHparams(task="tagging", max_seq_length=32, train_batch_size=16,
                              learning_rate=2e-3, num_train_epochs=30, log_steps=100)  # fmt: skip
    scores = finetune(model, train, dev, tmp_path / "out", hparams, tokenizer=tokenizer,
                      progress=False)  # fmt: skip
    # E- and I- need the word after as B- needs the one before; a 2-layer model gets there
    # in 30 epochs (F1 0.99 when written).
    assert scores["f1"] >= 0.9 and scores["spans"] > 100, scores
    predictions = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert len(predictions) == 60 and set(predictions[0]) == {"words", "tags", "spans"}
    assert {t for p in predictions for t in p["tags"]} <= {"O"} | {
        f"{b}-{k}" for b in "BIES" for k in ("PER", "LOC")
    }
    config = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert config["electra_fast_span_tags"] is True and len(config["id2label"]) == 9
    # The saved model is scored by spans again, and transformers reads its labels.
    hparams = FinetuneHparams(task="tagging", max_seq_length=32)
    again = finetune(tmp_path / "out" / "model", None, dev, tmp_path / "eval", hparams,
                     progress=False)  # fmt: skip
    assert again == scores
    transformers = pytest.importorskip("transformers")
    hf = transformers.ElectraForTokenClassification.from_pretrained(tmp_path / "out" / "model")
    assert hf.config.id2label[0] == "B-LOC"


def test_tagging_words_as_plain_classes_through_the_command_line(pretrained, tmp_path):
    model, tokenizer = pretrained
    rng = random.Random(12)
    for name, n in (("train", 200), ("dev", 40)):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            for _ in range(n):  # the tag is "low" for w10 .. w99 and "high" for w100 .. w199
                words = [f"w{rng.randrange(10, 200)}" for _ in range(rng.randint(2, 10))]
                tags = ["low" if int(w[1:]) < 100 else "high" for w in words]
                f.write(json.dumps({"tokens": words, "tags": tags}) + "\n")
    # The dev sentences again, untagged, in CoNLL form: one word per line.
    sentences = [json.loads(x)["tokens"] for x in (tmp_path / "dev.jsonl").read_text().split("\n")
                 if x]  # fmt: skip
    (tmp_path / "test.txt").write_text("\n\n".join("\n".join(words) for words in sentences))
    hparams = dict(max_seq_length=8, train_batch_size=16, learning_rate=2e-3, num_train_epochs=4)
    code = cli.main(["finetune", "--task", "tagging", "--model", str(model), "--train",
                     str(tmp_path / "train.jsonl"), "--eval", str(tmp_path / "dev.jsonl"),
                     "--out", str(tmp_path / "out"), "--tokenizer", str(tokenizer),
                     "--hparams", json.dumps(hparams),
                     "--predict", str(tmp_path / "test.txt")])  # fmt: skip
    assert code == 0
    predicted = json.loads((tmp_path / "out" / "test_predictions.json").read_text())
    assert predicted == json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert predicted[0]["words"] == sentences[0]
    scores = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    # Sentences of up to 10 words in 8 tokens: the words past the sixth are predicted "O",
    # which is never right, and still counted.
    assert scores["truncated_words"] > 0 and scores["words"] > 200
    kept = scores["words"] - scores["truncated_words"]
    assert scores["accuracy"] * scores["words"] >= 0.95 * kept, scores
    config = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "high", "1": "low"}
    assert config["electra_fast_span_tags"] is False


def test_gradient_checkpointing_finetunes_as_without(pretrained, tmp_path, monkeypatch):
    """The SQuAD head on a recomputed encoder: the same finetuned weights as without."""
    from safetensors.torch import load_file

    model, tokenizer = pretrained
    train = squad_file(tmp_path / "train.json", 40, seed=1)
    settings = {**QA, "num_train_epochs": 1}
    recomputed_layers = count_recomputed_layers(monkeypatch)
    for name, recompute in (("plain", False), ("recomputed", True)):
        hparams = FinetuneHparams(**settings, gradient_checkpointing=recompute)
        finetune(model, train, None, tmp_path / name, hparams, tokenizer=tokenizer,
                 progress=False)  # fmt: skip
        assert bool(recomputed_layers) == recompute
    plain = load_file(tmp_path / "plain" / "model" / "model.safetensors")
    recomputed = load_file(tmp_path / "recomputed" / "model" / "model.safetensors")
    assert plain.keys() == recomputed.keys()
    for name, tensor in plain.items():
        torch.testing.assert_close(recomputed[name], tensor, rtol=1e-6, atol=1e-7, msg=name)
