"""ElectraConfig: the paper's presets, the generator's size rule, config.json round trips."""

import json

import pytest

from electra_fast import ElectraConfig


@pytest.mark.parametrize(
    ("size", "discriminator", "generator"),
    [  # (hidden, layers, heads, FFN, embedding), generator (hidden, heads, FFN)
        ("small", (256, 12, 4, 1024, 128), (64, 1, 256)),
        ("base", (768, 12, 12, 3072, 768), (256, 4, 1024)),
        ("large", (1024, 24, 16, 4096, 1024), (256, 4, 1024)),
    ],
)
def test_presets_and_generator_sizes(size, discriminator, generator):
    config = ElectraConfig.preset(size)
    got = (
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.intermediate_size,
        config.embedding_size,
    )
    assert got == discriminator
    gen = config.generator_config()
    assert (gen.hidden_size, gen.num_attention_heads, gen.intermediate_size) == generator
    assert gen.num_hidden_layers == config.num_hidden_layers
    assert gen.embedding_size == config.embedding_size  # it shares the embeddings
    assert (config.max_position_embeddings, config.type_vocab_size) == (512, 2)
    assert (config.hidden_dropout_prob, config.layer_norm_eps) == (0.1, 1e-12)


def test_generator_layers_fraction():
    config = ElectraConfig.preset("small", generator_layers=0.5, generator_hidden_size=1.0)
    gen = config.generator_config()
    assert (gen.num_hidden_layers, gen.hidden_size, gen.num_attention_heads) == (6, 256, 4)


def test_hf_config_round_trip(tmp_path):
    config = ElectraConfig.preset("base", vocab_size=32000, mask_token_id=4, unpad=True)
    config.save(tmp_path, "ElectraForPreTraining")
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == "electra" and data["architectures"] == ["ElectraForPreTraining"]
    loaded = ElectraConfig.load(tmp_path)
    assert loaded.vocab_size == 32000 and loaded.mask_token_id == 4 and loaded.unpad


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        (dict(hidden_size=100, num_attention_heads=3), "multiple of"),
        (dict(hidden_act="swish"), "hidden_act"),
        (dict(hidden_dropout_prob=1.0), "hidden_dropout_prob"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(generator_hidden_size=0.0), "generator_hidden_size must be in \\(0, 1\\], got 0.0"),
        (dict(generator_layers=1.5), "generator_layers must be in \\(0, 1\\], got 1.5"),
        (dict(mask_prob=0.0), "mask_prob must be in \\(0, 1\\], got 0.0"),
        (dict(temperature=float("inf")), "temperature must be positive and finite, got inf"),
        (dict(disc_weight=-50.0), "disc_weight must be >= 0, got -50.0"),
        (dict(layer_norm_eps=float("nan")), "layer_norm_eps must be positive and finite, got nan"),
        (dict(type_vocab_size=0), "type_vocab_size must be positive, got 0"),
    ],
)
def test_bad_config_names_the_field(fields, words):
    with pytest.raises(ValueError, match=words):
        ElectraConfig(**fields)


def test_bad_preset_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="size"):
        ElectraConfig.preset("huge")
    with pytest.raises(FileNotFoundError, match="config"):
        ElectraConfig.load(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="model_type"):
        ElectraConfig.load(tmp_path)
