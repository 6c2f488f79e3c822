"""Reading google-research/electra's TensorFlow checkpoints without TensorFlow, and turning
them into our models. The checkpoint in tests/model/data/tf_electra was written by
TensorFlow itself (make_tf_checkpoint.py there, with the official variable names, Adam slots
and global_step); its values are reproducible from their names, which is the oracle here.
(When written, transformers 4.46's TensorFlow-based load_tf_weights_in_electra loaded the
same checkpoint into parameters equal to ours, for both models.)"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from electra_fast import ElectraDiscriminator, ElectraGenerator, cli
from electra_fast.model import tf_checkpoint
from electra_fast.model.tf_bundle import checkpoint_prefix, read_checkpoint
from electra_fast.tokenization import load
from tests.model.data.make_tf_checkpoint import SIZES, V, values

CHECKPOINT = Path(__file__).parent / "data" / "tf_electra"


def test_every_variable_is_read_as_tensorflow_wrote_it():
    variables = read_checkpoint(CHECKPOINT)
    expected = values()
    assert len(variables) == 3 * len(expected) + 1  # each with two Adam slots, and the step
    for name, value in expected.items():
        assert variables[name].dtype == np.float32 and np.array_equal(variables[name], value)
        assert np.array_equal(variables[f"{name}/adam_m"], np.ones_like(value))
    assert variables["global_step"] == 7 and variables["global_step"].dtype == np.int64
    # The same from the prefix, the .index file, and a `checkpoint` file naming another
    # machine's absolute path.
    prefix = CHECKPOINT / "model.ckpt-7"
    assert checkpoint_prefix(prefix) == checkpoint_prefix(CHECKPOINT / "model.ckpt-7.index")
    assert checkpoint_prefix(CHECKPOINT) == prefix


def test_conversion_puts_every_parameter_where_transformers_reads_it(tmp_path):
    written = tf_checkpoint.convert_tf_checkpoint(CHECKPOINT, tmp_path)
    assert written == [tmp_path / "discriminator", tmp_path / "generator"]
    tf = {name: torch.from_numpy(value) for name, value in values().items()}
    discriminator = ElectraDiscriminator.from_pretrained(tmp_path / "discriminator")
    generator = ElectraGenerator.from_pretrained(tmp_path / "generator")
    # Sizes read from the shapes; heads as officially, max(1, hidden // 64).
    for model, (hidden, layers, inner) in ((discriminator, SIZES["electra"]),
                                           (generator, SIZES["generator"])):  # fmt: skip
        config = model.config
        assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (
            hidden, layers, inner)  # fmt: skip
        assert config.num_attention_heads == 1 and config.vocab_size == V
    # The pair's proportions, as configure_pretraining.py would state them.
    assert discriminator.config.generator_hidden_size == 8 / 16
    assert discriminator.config.generator_layers == 1 / 2
    assert not discriminator.config.untied_generator_embeddings
    # Every TensorFlow parameter's values are in the converted models, as they are or
    # transposed (kernels): the values are all distinct, so each lands exactly once.
    tensors = [*discriminator.state_dict().values(), *generator.state_dict().values()]
    for name, value in tf.items():
        if name.startswith("electra/embeddings/"):
            continue  # shared: in both models, checked below
        hits = [t for t in tensors if t.shape == value.shape and torch.equal(t, value)]
        hits += [t for t in tensors if value.dim() == 2 and torch.equal(t, value.T)]
        qkv = [t for t in tensors if t.dim() >= 1 and t.shape[0] == 3 * value.shape[-1]]
        hits += [t for t in qkv for c in t.chunk(3) if torch.equal(c, value.T if value.dim() == 2
                 else value)]  # fmt: skip
        assert len(hits) == 1, name
    # The pair loads as one pretraining model (init_checkpoint for continued pretraining).
    from electra_fast.model import ElectraForPretraining

    pair = ElectraForPretraining.from_pretrained(tmp_path)
    assert pair.generator.encoder.embeddings is pair.discriminator.encoder.embeddings
    # And under the names transformers gives them.
    transformers = pytest.importorskip("transformers")
    hf = transformers.ElectraForPreTraining.from_pretrained(tmp_path / "discriminator")
    query = tf["electra/encoder/layer_1/attention/self/query/kernel"]
    assert torch.equal(hf.electra.encoder.layer[1].attention.self.query.weight, query.T)
    assert torch.equal(hf.discriminator_predictions.dense_prediction.weight,
                       tf["discriminator_predictions/dense_1/kernel"].T)  # fmt: skip
    assert torch.equal(hf.electra.embeddings.LayerNorm.weight,
                       tf["electra/embeddings/LayerNorm/gamma"])  # fmt: skip
    mlm = transformers.ElectraForMaskedLM.from_pretrained(tmp_path / "generator")
    words = tf["electra/embeddings/word_embeddings"]
    assert torch.equal(mlm.electra.embeddings.word_embeddings.weight, words)  # tied, shared
    assert torch.equal(hf.electra.embeddings.word_embeddings.weight, words)
    assert torch.equal(mlm.generator_lm_head.bias, tf["generator_predictions/output_bias"])
    assert torch.equal(mlm.electra.embeddings_project.weight,
                       tf["generator/embeddings_project/kernel"].T)  # fmt: skip


def test_the_command_with_a_tokenizer_and_bad_checkpoints(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tokenizers")
    from electra_fast.tokenization.wordpiece import WordPieceTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(V - 5)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    WordPieceTokenizer(tmp_path / "vocab.txt").save(tmp_path / "tok")
    # A bare vocab.txt is lower-cased, as the official do_lower_case by default.
    tf_checkpoint.convert_tf_checkpoint(
        CHECKPOINT, tmp_path / "v", tokenizer=tmp_path / "vocab.txt"
    )
    tok = load(tmp_path / "v" / "discriminator")
    assert tok.lowercase and tok.encode("W1 w2") == tok.encode("w1 w2")
    command = ["convert-tf", str(CHECKPOINT / "model.ckpt-7"), "--out", str(tmp_path / "o"),
               "--tokenizer", str(tmp_path / "tok"), "--num-attention-heads", "4"]  # fmt: skip
    assert cli.main(command) == 0
    config = json.loads((tmp_path / "o" / "discriminator" / "config.json").read_text())
    assert config["num_attention_heads"] == 4 and config["pad_token_id"] == 0
    assert (tmp_path / "o" / "generator" / "vocab.txt").is_file()
    # A checkpoint without its data file, and one with a variable of neither model.
    broken = tmp_path / "broken"
    shutil.copytree(CHECKPOINT, broken)
    (broken / "model.ckpt-7.data-00000-of-00001").unlink()
    assert cli.main(["convert-tf", str(broken), "--out", str(tmp_path / "b")]) == 2
    assert "model.ckpt-7.data-00000-of-00001 is missing" in capsys.readouterr().err
    extra = {**read_checkpoint(CHECKPOINT), "classifier/kernel": np.zeros((16, 2), np.float32)}

    def read(path, skip):
        return {k: v for k, v in extra.items() if not skip(k)}

    monkeypatch.setattr(tf_checkpoint, "read_checkpoint", read)
    with pytest.raises(ValueError, match=r"variables of no ELECTRA .*\['classifier/kernel'\]"):
        tf_checkpoint.convert_tf_checkpoint(CHECKPOINT, tmp_path / "c")
    assert not (tmp_path / "c").exists()  # nothing written


def test_a_generator_with_untied_embeddings_gets_its_own(tmp_path, monkeypatch):
    variables = read_checkpoint(CHECKPOINT, skip=tf_checkpoint._NOT_PARAMETERS.match)
    shared = {n: v for n, v in variables.items() if n.startswith("electra/embeddings/")}
    own = {name.replace("electra/", "generator/"): 2 * value for name, value in shared.items()}
    monkeypatch.setattr(tf_checkpoint, "read_checkpoint",
                        lambda path, skip: {**variables, **own})  # fmt: skip
    tf_checkpoint.convert_tf_checkpoint(CHECKPOINT, tmp_path)
    generator = ElectraGenerator.from_pretrained(tmp_path / "generator")
    discriminator = ElectraDiscriminator.from_pretrained(tmp_path / "discriminator")
    words = torch.from_numpy(variables["electra/embeddings/word_embeddings"])
    assert torch.equal(generator.encoder.embeddings.word.weight, 2 * words)
    assert torch.equal(discriminator.encoder.embeddings.word.weight, words)
    assert discriminator.config.untied_generator_embeddings


def test_a_damaged_data_file_is_an_error_naming_the_variable(tmp_path):
    """The test checkpoint's CRCs were computed by TensorFlow: reading it at all (above)
    checks ours against them. One flipped byte must be caught, or read when told not to."""
    damaged = tmp_path / "damaged"
    shutil.copytree(CHECKPOINT, damaged)
    data = damaged / "model.ckpt-7.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    intact = read_checkpoint(CHECKPOINT)
    raw[len(raw) // 2] ^= 0x10
    data.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"variable '[^']+': its \d+ bytes have CRC-32C") as error:
        read_checkpoint(damaged)
    name = str(error.value).split("'")[1]
    unchecked = read_checkpoint(damaged, verify=False)
    assert not np.array_equal(unchecked[name], intact[name])
    assert sum(not np.array_equal(unchecked[n], intact[n]) for n in intact) == 1


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda raw: raw[: len(raw) // 2], r"no table footer"),
        # A shape or an offset that changed: TensorFlow's reader catches it by the checksum
        # every block of the index carries, as ours must (the intact index, written by
        # TensorFlow, passes the same check in every test above).
        (lambda raw: raw[:100] + bytes([raw[100] ^ 0x01]) + raw[101:], r"fails its checksum"),
    ],
)
def test_a_damaged_index_is_an_error_naming_it(tmp_path, damage, words):
    damaged = tmp_path / "damaged"
    shutil.copytree(CHECKPOINT, damaged)
    index = damaged / "model.ckpt-7.index"
    index.write_bytes(damage(index.read_bytes()))
    with pytest.raises(ValueError, match=rf"model\.ckpt-7\.index is damaged: .*{words}"):
        read_checkpoint(damaged)
