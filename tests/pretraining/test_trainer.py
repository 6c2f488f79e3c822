"""The pretraining loop on CPU with a tiny model: the loss falls on the sample data, an
interrupted and resumed run ends with the parameters of an uninterrupted one, hparams are
validated, checkpoints are atomic, the run exports Hugging Face models."""

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from electra_fast import tokenization
from electra_fast.cli import main
from electra_fast.data import PretrainingDataset
from electra_fast.pretraining import checkpoint as checkpoints
from electra_fast.pretraining.hparams import Hparams
from electra_fast.pretraining.trainer import export, pretrain
from tests.model.test_modeling import count_recomputed_layers
from tests.samples import prepare_en_sample

TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 128, "embedding_size": 32}  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return prepare_en_sample(tmp_path_factory.mktemp("data"), vocab_size=500, max_seq_length=32)


def hparams(**overrides):
    fields = dict(
        model_size="small", max_seq_length=32, train_batch_size=16, num_train_steps=100,
        num_warmup_steps=10, learning_rate=2e-3, model_hparam_overrides=TINY,
        save_checkpoints_steps=1000, iterations_per_loop=10, generator_hidden_size=0.5,
    )  # fmt: skip
    fields.update(overrides)
    return Hparams(**fields)


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_the_run_exports(dataset, tmp_path):
    summary = pretrain(dataset, tmp_path / "run", hparams(), progress=False)
    assert summary == {"step": 100, "finished": True, "skipped": 0}
    records = metrics(tmp_path / "run")
    first, last = records[0], records[-1]
    assert last["step"] == 100 and last["loss"] < 0.7 * first["loss"], (first, last)
    keys = {"step", "loss", "gen_loss", "disc_loss", "mlm_acc", "disc_acc", "disc_precision",
            "disc_recall", "replaced", "lr", "grad_norm"}  # fmt: skip
    assert keys | {"tokens_per_s"} <= set(last)
    from electra_fast import ElectraDiscriminator

    assert ElectraDiscriminator.from_pretrained(tmp_path / "run" / "export" / "discriminator")
    # Each exported model carries the dataset's tokenizer, so finetuning needs no --tokenizer.
    manifest = json.loads((dataset / "manifest.json").read_text())
    for part in ("discriminator", "generator"):
        exported = tokenization.load(tmp_path / "run" / "export" / part)
        assert exported.checksum() == manifest["tokenizer_checksum"]
    effective = json.loads((tmp_path / "run" / "config.json").read_text())
    assert effective["vocab_size"] == 500 and effective["per_device_batch_size"] == 16


def test_tensorboard_shows_each_logged_step_once(dataset, tmp_path):
    """RUN/tensorboard, read back by TensorBoard's own reader, holds metrics.jsonl's values;
    after a crash past the last checkpoint the resumed run logs some steps again, and
    TensorBoard still shows each step once."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from electra_fast.pretraining.trainer import TENSORBOARD_SCALARS

    run = tmp_path / "run"
    settings = hparams(num_train_steps=12, save_checkpoints_steps=5, iterations_per_loop=2)
    pretrain(dataset, run, settings, progress=False, stop_at_step=9)
    (run / "checkpoints" / "step-00000009.pt").unlink()  # as if it had died at step 9
    pretrain(dataset, run, settings, progress=False)  # resumes at 5, logs 6 and 8 again
    records = metrics(run)
    assert [r["step"] for r in records] == [1, 2, 4, 6, 8, 6, 8, 10, 12]
    final = {r["step"]: r for r in records}  # the resumed run's values win
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for key in TENSORBOARD_SCALARS:
        shown = events.Scalars(f"pretrain/{key}")
        assert [e.step for e in shown] == sorted(final), key
        for e in shown:
            assert e.value == pytest.approx(final[e.step][key], rel=1e-5, abs=1e-6), (key, e)


def test_without_tensorboard_a_run_logs_to_metrics_alone(dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    pretrain(dataset, tmp_path / "run", hparams(num_train_steps=2, iterations_per_loop=1),
             progress=False)  # fmt: skip
    assert [r["step"] for r in metrics(tmp_path / "run")] == [1, 2]
    assert not (tmp_path / "run" / "tensorboard").exists()


@pytest.mark.parametrize("recompute", [False, True], ids=["plain", "gradient-checkpointing"])
def test_a_compiled_run_trains_like_an_eager_one(dataset, tmp_path, monkeypatch, recompute):
    """`compile: true` runs the step under torch.compile. The masking and sampling keys are
    drawn outside the model, so the compiled run draws what the eager one draws; under
    aot_eager (the same aten ops, so the same numbers, dropout included) the two end equal,
    and fullgraph shows the trainer's call compiles without a graph break, with gradient
    checkpointing too."""
    compiled, compile = [], torch.compile

    def whole_graph(module, **_):
        compiled.append(module)
        return compile(module, backend="aot_eager", fullgraph=True)

    monkeypatch.setattr(torch, "compile", whole_graph)
    settings = dict(num_train_steps=6, iterations_per_loop=3, gradient_checkpointing=recompute)
    pretrain(dataset, tmp_path / "eager", hparams(**settings), progress=False)
    assert not compiled
    pretrain(dataset, tmp_path / "compiled", hparams(compile=True, **settings), progress=False)
    assert len(compiled) == 1
    eager, graph = metrics(tmp_path / "eager"), metrics(tmp_path / "compiled")
    assert [r["loss"] for r in graph] == [r["loss"] for r in eager]
    a = torch.load(tmp_path / "eager/checkpoints/step-00000006.pt", weights_only=False)
    b = torch.load(tmp_path / "compiled/checkpoints/step-00000006.pt", weights_only=False)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_gradient_checkpointing_trains_as_without(dataset, tmp_path, monkeypatch):
    """`gradient_checkpointing: true` changes where the activations come from in the
    backward, not the numbers: the two runs end with the same parameters."""
    recomputed_layers = count_recomputed_layers(monkeypatch)
    settings = dict(num_train_steps=4, save_checkpoints_steps=4, iterations_per_loop=2)
    pretrain(dataset, tmp_path / "plain", hparams(**settings), progress=False)
    assert not recomputed_layers
    pretrain(dataset, tmp_path / "recomputed", hparams(gradient_checkpointing=True, **settings),
             progress=False)  # fmt: skip
    # Both encoders' layers (2 each, TINY), at each of the 4 steps.
    assert len(recomputed_layers) == 4 * 2 * 2
    a = torch.load(tmp_path / "plain/checkpoints/step-00000004.pt", weights_only=False)
    b = torch.load(tmp_path / "recomputed/checkpoints/step-00000004.pt", weights_only=False)
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-6, atol=1e-7, msg=name)
    assert [r["loss"] for r in metrics(tmp_path / "recomputed")] == [
        r["loss"] for r in metrics(tmp_path / "plain")
    ]


def test_resumed_run_ends_like_an_uninterrupted_one(dataset, tmp_path):
    settings = hparams(num_train_steps=12, gradient_accumulation_steps=2, save_checkpoints_steps=5)
    pretrain(dataset, tmp_path / "straight", settings, progress=False)
    stopped = pretrain(dataset, tmp_path / "resumed", settings, progress=False, stop_at_step=7)
    assert stopped == {"step": 7, "finished": False, "skipped": 0}
    pretrain(dataset, tmp_path / "resumed", settings, progress=False)
    a = torch.load(tmp_path / "straight/checkpoints/step-00000012.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed/checkpoints/step-00000012.pt", weights_only=False)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["sampler"] == b["sampler"]


def test_hparams_validation(dataset, tmp_path):
    with pytest.raises(ValueError, match=r"unknown hparams \['lerning_rate'\]"):
        Hparams.from_json('{"lerning_rate": 0.1}')
    with pytest.raises(ValueError, match="model_size"):
        Hparams.from_json('{"model_size": "tiny"}')
    with pytest.raises(ValueError, match="JSON"):
        Hparams.from_json("{not json")
    with pytest.raises(ValueError, match="max_grad_norm must be positive, got 0"):
        Hparams.from_json('{"max_grad_norm": 0}')
    with pytest.raises(ValueError, match="cuda_graphs and compile exclude each other"):
        Hparams.from_json('{"cuda_graphs": true, "compile": true}')
    assert Hparams.from_json('{"cuda_graphs": true, "precision": "fp16"}').cuda_graphs
    with pytest.raises(
        ValueError, match="cuda_graphs=true needs one process on a GPU, got the cpu"
    ):
        pretrain(dataset, tmp_path / "r", hparams(cuda_graphs=True), progress=False, device="cpu")
    base = Hparams.from_json('{"model_size": "base"}')
    assert (base.learning_rate, base.train_batch_size, base.max_seq_length) == (2e-4, 256, 512)
    large = Hparams.from_json('{"model_size": "large", "num_train_steps": 10}')
    assert (large.mask_prob, large.train_batch_size, large.num_train_steps) == (0.25, 2048, 10)
    path = tmp_path / "h.json"
    path.write_text('{"train_batch_size": 64}')
    assert Hparams.from_json(str(path)).train_batch_size == 64
    with pytest.raises(ValueError, match="vocab_size"):
        pretrain(dataset, tmp_path / "r", hparams(vocab_size=999), progress=False)
    with pytest.raises(ValueError, match="multiple of"):
        pretrain(dataset, tmp_path / "r", hparams(gradient_accumulation_steps=3), progress=False)
    examples = len(PretrainingDataset(dataset))
    too_big = hparams(train_batch_size=examples + 1)
    with pytest.raises(ValueError, match=f"holds {examples} examples, fewer than one batch"):
        pretrain(dataset, tmp_path / "r", too_big, progress=False)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ('{"compile": "false"}', "compile must be true or false, got 'false'"),
        ('{"learning_rate": "fast"}', "learning_rate must be a number, got 'fast'"),
        ('{"num_train_steps": 1.5}', "num_train_steps must be an integer, got 1.5"),
        ('{"vocab_size": true}', "vocab_size must be an integer or null, got True"),
        ('{"model_hparam_overrides": [1]}', "model_hparam_overrides must be a JSON object"),
        ('{"precision": 16}', "precision must be a string, got 16"),
        (
            '{"model_hparam_overrides": {"hidden_size": "64"}}',
            "model_hparam_overrides.hidden_size must be an integer, got '64'",
        ),
        (
            '{"model_hparam_overrides": {"special_token_ids": [0, "1"]}}',
            "model_hparam_overrides.special_token_ids must be a list of integers",
        ),
    ],  # fmt: skip
)
def test_mistyped_hparams_are_named(given, message):
    with pytest.raises(ValueError, match=f"hparams {re.escape(message)}"):
        Hparams.from_json(given)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ('{"learning_rate": 0}', "learning_rate must be positive and finite, got 0.0"),
        ('{"learning_rate": NaN}', "learning_rate must be positive and finite, got nan"),
        ('{"num_warmup_steps": -1}', "num_warmup_steps must be >= 0, got -1"),
        ('{"weight_decay_rate": -0.01}', "weight_decay_rate must be >= 0, got -0.01"),
        ('{"adam_epsilon": 0}', "adam_epsilon must be positive and finite, got 0.0"),
        ('{"mask_prob": 1.5}', "mask_prob must be in (0, 1], got 1.5"),
        ('{"temperature": 0}', "temperature must be positive and finite, got 0.0"),
        ('{"generator_layers": 0}', "generator_layers must be in (0, 1], got 0.0"),
        ('{"gen_weight": -1}', "gen_weight must be >= 0, got -1.0"),
        # 0 once stopped a run at its first step, however finite its loss
        ('{"max_consecutive_nonfinite": 0}', "max_consecutive_nonfinite must be positive, got 0"),
        ('{"embedding_size": 0}', "embedding_size must be positive, got 0"),
    ],  # fmt: skip
)
def test_out_of_range_hparams_are_named(given, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Hparams.from_json(given)


def test_unknown_model_overrides_are_named():
    with pytest.raises(ValueError, match=r"unknown model_hparam_overrides \['hiden_size'\]"):
        Hparams.from_json('{"model_hparam_overrides": {"hiden_size": 64}}')


def test_hparams_take_an_integer_as_a_number():
    h = Hparams.from_json('{"learning_rate": 1, "embedding_size": null}')
    assert (
        h.learning_rate == 1.0 and isinstance(h.learning_rate, float) and h.embedding_size is None
    )


def test_resuming_with_other_model_sizes_is_refused(dataset, tmp_path):
    pretrain(dataset, tmp_path / "run", hparams(num_train_steps=2), progress=False)
    wider = hparams(num_train_steps=4, model_hparam_overrides={**TINY, "hidden_size": 128})
    with pytest.raises(ValueError, match=r"another model .*hidden_size 64 \(hparams: 128\)"):
        pretrain(dataset, tmp_path / "run", wider, progress=False)


def saved(step: int) -> dict:
    """A checkpoint's state as small as load_checkpoint takes."""
    return {"step": step, "model": {}, "config": {}}


def test_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    directory = tmp_path / "checkpoints"
    checkpoints.save_checkpoint(directory, 1, saved(1), keep=3)

    def full_disk(state, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", full_disk)
    with pytest.raises(OSError, match="space"):
        checkpoints.save_checkpoint(directory, 2, saved(2), keep=3)
    monkeypatch.undo()
    assert [p.name for p in directory.iterdir()] == ["step-00000001.pt"]
    state, path = checkpoints.load_latest(directory)
    assert state == saved(1)
    for step in range(2, 7):
        checkpoints.save_checkpoint(directory, step, saved(step), keep=3)
    assert [s for s, _ in checkpoints.checkpoints(directory)] == [4, 5, 6]


def test_the_newest_readable_checkpoint_is_the_one_loaded(tmp_path):
    directory = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        checkpoints.save_checkpoint(directory, step, saved(step), keep=5)
    (directory / "step-00000003.pt").write_bytes(b"cut short")
    checkpoints.save_checkpoint(directory, 4, {"step": 4}, keep=5)  # no model: not ours
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint"):
        state, path = checkpoints.load_latest(directory)
    assert state == saved(2) and path.name == "step-00000002.pt"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "checkpoint .*missing.pt is not a file"),
        (b"garbage", "bad.pt is not a readable checkpoint"),
        ({"weights": 1}, "bad.pt is not a pretraining checkpoint"),
    ],
)
def test_export_of_a_bad_checkpoint_names_it(tmp_path, content, message):
    path = tmp_path / ("missing.pt" if content is None else "bad.pt")
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        export(tmp_path / "run", path)
    assert not (tmp_path / "run").exists()


def test_cli_pretrain_and_export(dataset, tmp_path):
    settings = json.dumps({**hparams(num_train_steps=3).to_dict()})
    assert main(["pretrain", "--data", str(dataset), "--out", str(tmp_path / "run"),
                 "--hparams", settings, "--stop-at-step", "2"]) == 0  # fmt: skip
    assert main(["export", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "export" / "generator" / "model.safetensors").is_file()
    pytest.importorskip("matplotlib")
    assert main(["plot", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", str(tmp_path)]) == 2  # not a run: a message, not a traceback
    code = main(["pretrain", "--data", str(dataset), "--out", str(tmp_path / "run"),
                 "--hparams", settings, "--no-resume"])  # fmt: skip
    assert code == 2


def test_a_record_cut_short_is_left_out(dataset, tmp_path):
    """A process killed while writing metrics.jsonl leaves a line without its end: the plot
    reads the records before it, and a resumed run cuts it and logs on from the next line."""
    run = tmp_path / "run"
    settings = hparams(num_train_steps=6, save_checkpoints_steps=2, iterations_per_loop=2)
    pretrain(dataset, run, settings, progress=False, stop_at_step=4)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "loss": 1.2')
    if importlib.util.find_spec("matplotlib") is not None:
        assert main(["plot", str(run)]) == 0
    pretrain(dataset, run, settings, progress=False)
    assert [r["step"] for r in metrics(run)] == [1, 2, 4, 6]


def test_the_plot_reads_runs_that_logged_fewer_metrics(tmp_path):
    """Runs of earlier versions logged no discriminator recall or replaced share: their plot
    draws what they have."""
    pytest.importorskip("matplotlib")
    from electra_fast.pretraining.plot import plot_run

    old = {"loss": 40.0, "gen_loss": 8.0, "disc_loss": 0.6, "mlm_acc": 0.1, "disc_acc": 0.85}
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": step, **old}) + "\n" for step in (1, 2, 3))
    )
    assert plot_run(tmp_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_interrupted_export_keeps_the_previous_one(dataset, tmp_path, monkeypatch):
    """Both models and their tokenizers are written before either replaces the old export."""
    from electra_fast.model import ElectraForPretraining

    run = tmp_path / "run"
    pretrain(dataset, run, hparams(num_train_steps=2, save_checkpoints_steps=1), progress=False)
    files = sorted(p.relative_to(run) for p in (run / "export").rglob("*") if p.is_file())
    assert {f.parts[1] for f in files} == {"discriminator", "generator"}
    before = {f: (run / f).read_bytes() for f in files}
    save = ElectraForPretraining.save_pretrained

    def disk_full(self, directory):
        save(self, directory)  # both models written into the staging directory, then a failure
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ElectraForPretraining, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="space"):
        export(run, run / "checkpoints" / "step-00000001.pt")
    assert {f: (run / f).read_bytes() for f in files} == before
    monkeypatch.undo()
    export(run, run / "checkpoints" / "step-00000001.pt")
    after = {f: (run / f).read_bytes() for f in files}
    assert after.keys() == before.keys()
    weights = Path("discriminator") / "model.safetensors"
    assert after[Path("export") / weights] != before[Path("export") / weights]


def test_non_finite_steps_are_skipped_then_stop_the_run(dataset, tmp_path, monkeypatch):
    """A skipped step counts as a step and changes neither the parameters nor the moments; too
    many in a row stop the run before it saves again."""
    from electra_fast.pretraining import trainer

    settings = hparams(num_train_steps=20, save_checkpoints_steps=2, max_consecutive_nonfinite=3)
    pretrain(dataset, tmp_path / "run", settings, progress=False, stop_at_step=4)
    shutil.copytree(tmp_path / "run", tmp_path / "clean")
    pretrain(dataset, tmp_path / "clean", settings, progress=False, stop_at_step=5)
    real = trainer.AdamWeightDecay.grad_norm
    calls = []

    def exploding(optimizer):
        calls.append(1)
        norm = real(optimizer)
        return norm if len(calls) == 1 else torch.tensor(float("inf"))  # one good step, then inf

    monkeypatch.setattr(trainer.AdamWeightDecay, "grad_norm", exploding)
    with pytest.raises(trainer.NonFiniteLoss, match="3 steps in a row"):
        pretrain(dataset, tmp_path / "run", settings, progress=False)
    # Steps 6, 7 and 8 were skipped: the checkpoint of step 6 holds the state after step 5,
    # and step 8's was never written.
    state, path = checkpoints.load_latest(tmp_path / "run" / "checkpoints")
    assert path.name == "step-00000006.pt" and state["skipped"] == 1
    clean, _ = checkpoints.load_latest(tmp_path / "clean" / "checkpoints")
    assert clean["step"] == 5
    for name, tensor in clean["model"].items():
        assert torch.equal(state["model"][name], tensor), name
    for index, slots in clean["optimizer"]["state"].items():
        for key, tensor in slots.items():
            assert torch.equal(state["optimizer"]["state"][index][key], tensor), (index, key)


def test_a_tokenizer_gone_since_prepare_is_left_out_of_the_export(dataset, tmp_path, capsys):
    moved = tmp_path / "data"
    shutil.copytree(dataset, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["tokenizer"] = str(tmp_path / "gone")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    pretrain(moved, tmp_path / "run", hparams(num_train_steps=2), progress=False)
    assert "tokenizer cannot be loaded" in capsys.readouterr().err
    export = tmp_path / "run" / "export" / "discriminator"
    assert (export / "model.safetensors").is_file()
    assert not (export / tokenization.CONFIG).exists()


def test_a_new_run_starts_from_an_init_checkpoint(dataset, tmp_path):
    """Continued pretraining: the run's step-0 parameters are the export's, and a checkpoint of
    other sizes is an error that names the difference."""
    from electra_fast.model import ElectraForPretraining

    pretrain(dataset, tmp_path / "first", hparams(num_train_steps=5), progress=False)
    export = tmp_path / "first" / "export"
    settings = hparams(num_train_steps=5, init_checkpoint=str(export))
    pretrain(dataset, tmp_path / "second", settings, progress=False, stop_at_step=0)
    start = torch.load(tmp_path / "second/checkpoints/step-00000000.pt", weights_only=False)
    exported = ElectraForPretraining.from_pretrained(export).state_dict()
    assert start["model"].keys() == exported.keys()
    for name, tensor in exported.items():
        assert torch.equal(start["model"][name], tensor), name
    # Without it, the same hparams start elsewhere.
    pretrain(dataset, tmp_path / "plain", hparams(num_train_steps=5), progress=False,
             stop_at_step=0)  # fmt: skip
    plain = torch.load(tmp_path / "plain/checkpoints/step-00000000.pt", weights_only=False)
    name = "discriminator.encoder.layers.0.qkv.weight"
    assert not torch.equal(plain["model"][name], start["model"][name])
    wider = hparams(init_checkpoint=str(export),
                    model_hparam_overrides={**TINY, "hidden_size": 128})  # fmt: skip
    with pytest.raises(ValueError, match=r"init_checkpoint .* discriminator hidden_size 64 \(hp"):
        pretrain(dataset, tmp_path / "third", wider, progress=False)


def test_a_bf16_run_on_the_cpu_trains(dataset, tmp_path):
    """precision "bf16" on the CPU runs the step under CPU autocast, where LayerNorm keeps bf16
    (CUDA autocast makes it float32): the generator's fused output layer once refused the bf16
    hidden states there. The loss falls as in float32, and the parameters stay float32."""
    summary = pretrain(dataset, tmp_path / "run", hparams(precision="bf16", num_train_steps=60),
                       progress=False)  # fmt: skip
    assert summary == {"step": 60, "finished": True, "skipped": 0}
    records = metrics(tmp_path / "run")
    assert records[-1]["loss"] < 0.8 * records[0]["loss"], (records[0], records[-1])
    saved = torch.load(tmp_path / "run/checkpoints/step-00000060.pt", weights_only=False)
    assert all(t.dtype == torch.float32 for t in saved["model"].values())
