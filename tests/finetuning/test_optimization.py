"""The official layer-wise learning rates and weight-decay exclusions."""

import pytest

from electra_fast.finetuning.hparams import FinetuneHparams
from electra_fast.finetuning.optimization import layerwise_groups
from electra_fast.model import ElectraForQuestionAnswering
from tests.finetuning.cases import tiny_config


def test_layerwise_learning_rates_follow_the_official_depths():
    config = tiny_config(num_hidden_layers=3, embedding_size=16)
    model = ElectraForQuestionAnswering(config)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = layerwise_groups(model, weight_decay=0.01, decay=0.8)
    seen = {}
    for group in groups:
        for p in group["params"]:
            seen[names[id(p)]] = (group["lr_scale"], group["weight_decay"])
    assert set(seen) == set(names.values())
    # _get_layer_lrs: lr * decay^(n_layers + 2 - depth); n_layers = 3.
    assert seen["encoder.embeddings.word.weight"] == (pytest.approx(0.8**5), 0.01)
    assert seen["encoder.embeddings.norm.weight"] == (pytest.approx(0.8**5), 0.0)
    assert seen["encoder.embeddings_project.bias"] == (pytest.approx(0.8**5), 0.0)
    assert seen["encoder.layers.0.qkv.weight"] == (pytest.approx(0.8**4), 0.01)
    assert seen["encoder.layers.2.ffn_norm.bias"] == (pytest.approx(0.8**2), 0.0)
    assert seen["qa_outputs.weight"] == (1.0, 0.01)
    flat = layerwise_groups(model, weight_decay=0.01, decay=0.0)  # 0: no layer-wise decay
    assert {g["lr_scale"] for g in flat} == {1.0}


def test_defaults_by_model_size_and_task():
    small = FinetuneHparams(task="squad").resolved(hidden_size=256)
    assert (small.learning_rate, small.layerwise_lr_decay, small.num_train_epochs,
            small.max_seq_length) == (1e-4, 0.8, 2.0, 512)  # fmt: skip
    large = FinetuneHparams().resolved(hidden_size=1024)
    assert (
        large.model_size,
        large.learning_rate,
        large.layerwise_lr_decay,
        large.num_train_epochs,
        large.max_seq_length,
    ) == ("large", 5e-5, 0.9, 3.0, 128)
    assert FinetuneHparams(layerwise_lr_decay=0.0).resolved(256).layerwise_lr_decay == 0.0
    with pytest.raises(ValueError, match=r"unknown hparams \['lr'\]"):
        FinetuneHparams.from_json('{"lr": 1}')
    with pytest.raises(ValueError, match="task must be one of"):
        FinetuneHparams(task="ner")
    with pytest.raises(ValueError, match="train_batch_size must be positive"):
        FinetuneHparams.from_json('{"train_batch_size": 0}')
    with pytest.raises(ValueError, match="max_grad_norm must be positive, got -1"):
        FinetuneHparams.from_json('{"max_grad_norm": -1}')
    with pytest.raises(ValueError, match="weight_decay_rate must be >= 0, got -0.01"):
        FinetuneHparams.from_json('{"weight_decay_rate": -0.01}')
    with pytest.raises(ValueError, match=r"layerwise_lr_decay must be in \[0, 1\], got 1.5"):
        FinetuneHparams(layerwise_lr_decay=1.5)
    # A setting given as 0 is an error, not taken for "unset" and replaced by the default.
    for name in ("learning_rate", "num_train_epochs", "max_seq_length", "num_train_steps"):
        with pytest.raises(ValueError, match=f"^{name} must be positive.*, got 0"):
            FinetuneHparams.from_json(f'{{"{name}": 0}}')
    given = FinetuneHparams(learning_rate=3e-4, num_train_epochs=10, max_seq_length=64)
    assert given.resolved(1024).learning_rate == 3e-4
    assert given.resolved(1024).num_train_epochs == 10.0
    assert given.resolved(1024).max_seq_length == 64
    assert FinetuneHparams(task="tagging").resolved(256).max_seq_length == 256  # as for chunk
    qa = FinetuneHparams(task="squad")  # configure_finetuning.py's QA defaults
    assert (qa.joint_prediction, qa.beam_size, qa.qa_na_threshold) == (True, 20, -2.75)
    with pytest.raises(ValueError, match="v2 with joint_prediction needs answerable_classifier"):
        FinetuneHparams(task="squad", v2=True, answerable_classifier=False)
    with pytest.raises(ValueError, match="tagging_level must be 'span' or 'token', got 'word'"):
        FinetuneHparams(task="tagging", tagging_level="word")
