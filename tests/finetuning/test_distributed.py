"""Finetuning under torchrun with two CPU processes (gloo): each rank trains on half of every
batch and evaluates its share of the eval set, only rank 0 writes, and the run ends where one
process with the same global batch ends."""

import json

import pytest
import torch

from electra_fast.finetuning import FinetuneHparams, finetune
from tests.finetuning.cases import pretrained_discriminator
from tests.finetuning.test_trainer import QA, classification_file, ner_file, squad_file
from tests.torchrun import torchrun_cli

pytestmark = [
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny discriminator without dropout, so that the ranks' random draws cannot matter."""
    root = tmp_path_factory.mktemp("pretrained")
    return pretrained_discriminator(root, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def torchrun(port, task, model, out, hparams, *, train=None, dev=None, tokenizer=None):
    """electra-fast finetune under torchrun with 2 CPU processes (gloo)."""
    arguments = ["finetune", "--task", task, "--model", str(model), "--out", str(out),
                 "--hparams", json.dumps(hparams)]  # fmt: skip
    for flag, value in (("--train", train), ("--eval", dev), ("--tokenizer", tokenizer)):
        if value is not None:
            arguments += [flag, str(value)]
    torchrun_cli(port, *arguments)


def test_two_processes_end_where_one_process_does(pretrained, tmp_path):
    model, tokenizer = pretrained
    train = classification_file(tmp_path / "train.jsonl", 96, seed=20)
    dev = classification_file(tmp_path / "dev.jsonl", 31, seed=21)  # shares of 16 and 15
    settings = dict(text_field="sentence", label_field="y", max_seq_length=16,
                    train_batch_size=16, learning_rate=2e-3, num_train_steps=8,
                    log_steps=4)  # fmt: skip
    one = finetune(model, train, dev, tmp_path / "one", FinetuneHparams(**settings),
                   tokenizer=tokenizer, progress=False)  # fmt: skip
    torchrun(29741, "classification", model, tmp_path / "two", settings, train=train, dev=dev,
             tokenizer=tokenizer)  # fmt: skip
    # The parameters agree up to summation order: the mean of the ranks' mean losses over
    # equal halves is the mean over the batch, and clipping sees the averaged gradient.
    from safetensors.torch import load_file

    ours = load_file(tmp_path / "two" / "model" / "model.safetensors")
    for name, tensor in load_file(tmp_path / "one" / "model" / "model.safetensors").items():
        torch.testing.assert_close(ours[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    two = json.loads((tmp_path / "two" / "eval_results.json").read_text())
    assert two == pytest.approx(one)
    predictions = [json.loads((tmp_path / run / "predictions.json").read_text())
                   for run in ("one", "two")]  # fmt: skip
    assert predictions[0] == predictions[1]  # gathered back in the eval file's order
    log = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert log[0] == {"world_size": 2, "per_device_batch_size": 8}
    assert [r["step"] for r in log if "step" in r] == [4, 8]  # one writer: rank 0
    losses = [r["loss"] for r in log if "loss" in r]
    expected = [
        json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
    ]
    assert losses == pytest.approx([r["loss"] for r in expected if "loss" in r], rel=1e-4)


def test_two_processes_train_and_evaluate_squad_and_tagging(pretrained, tmp_path):
    """Every head trains under DistributedDataParallel (which fails on a parameter the loss
    does not reach); evaluated alone, each rank runs its share of the windows or sentences,
    and the answers, null odds and tags gathered from both equal one process's."""
    model, tokenizer = pretrained
    runs = {
        "squad": (squad_file(tmp_path / "qa.json", 40, seed=22, impossible=0.3),
                  {**QA, "v2": True, "num_train_steps": 3}),
        "tagging": (ner_file(tmp_path / "ner.txt", 41, seed=23),
                    {"task": "tagging", "max_seq_length": 12, "train_batch_size": 8,
                     "num_train_steps": 3}),
    }  # fmt: skip
    for port, (task, (data, settings)) in zip((29743, 29747), runs.items(), strict=True):
        # A briefly trained model, so that the heads are not at their initialisation.
        torchrun(port, task, model, tmp_path / task, settings, train=data, tokenizer=tokenizer)
        trained = tmp_path / task / "model"
        evaluation = {k: v for k, v in settings.items() if k != "num_train_steps"}
        one = finetune(trained, None, data, tmp_path / f"{task}-one",
                       FinetuneHparams(**evaluation), progress=False)  # fmt: skip
        torchrun(port + 1, task, trained, tmp_path / f"{task}-two", evaluation, dev=data)
        two = json.loads((tmp_path / f"{task}-two" / "eval_results.json").read_text())
        assert two == pytest.approx(one)
        predictions = [json.loads((tmp_path / f"{task}-{n}" / "predictions.json").read_text())
                       for n in ("one", "two")]  # fmt: skip
        if task == "squad":
            assert predictions[0]["answers"] == predictions[1]["answers"]
            assert predictions[0]["best_non_null"] == predictions[1]["best_non_null"]
            assert predictions[1]["null_odds"] == pytest.approx(predictions[0]["null_odds"])
        else:
            assert predictions[0] == predictions[1]


def test_the_global_batch_must_split_evenly(pretrained, tmp_path, monkeypatch):
    from electra_fast import distributed

    model, tokenizer = pretrained
    monkeypatch.setattr(distributed, "init", lambda kind: (0, 3))
    train = classification_file(tmp_path / "train.jsonl", 40, seed=24)
    hparams = FinetuneHparams(text_field="sentence", label_field="y", train_batch_size=16)
    with pytest.raises(ValueError, match="train_batch_size=16 must be a multiple of the world"):
        finetune(model, train, None, tmp_path / "out", hparams, tokenizer=tokenizer)
