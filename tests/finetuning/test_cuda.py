"""Finetuning on a GPU (skipped without one): with bf16 autocast the official SQuAD head and
a classifier learn the synthetic tasks the CPU tests use, to the same bars."""

import pytest
import torch

from electra_fast.finetuning import FinetuneHparams, finetune
from tests.finetuning.test_trainer import QA, classification_file, pretrained, squad_file  # noqa: F401

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_squad_and_classification_learn_in_bf16(pretrained, tmp_path):  # noqa: F811
    model, tokenizer = pretrained
    train = squad_file(tmp_path / "train.json", 300, seed=1)
    dev = squad_file(tmp_path / "dev.json", 60, seed=2)
    scores = finetune(model, train, dev, tmp_path / "qa", FinetuneHparams(**QA),
                      tokenizer=tokenizer, progress=False, device="cuda")  # fmt: skip
    assert scores["exact"] >= 45 and scores["f1"] >= 75, scores
    train = classification_file(tmp_path / "train.jsonl", 400, seed=5)
    dev = classification_file(tmp_path / "dev.jsonl", 100, seed=6)
    hparams = FinetuneHparams(text_field="sentence", label_field="y", max_seq_length=16,
                              train_batch_size=16, learning_rate=2e-3,
                              num_train_epochs=4)  # fmt: skip
    scores = finetune(model, train, dev, tmp_path / "cls", hparams, tokenizer=tokenizer,
                      progress=False, device="cuda")  # fmt: skip
    assert scores["accuracy"] >= 0.9, scores
