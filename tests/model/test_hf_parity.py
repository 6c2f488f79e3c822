"""Our discriminator and generator against transformers' ElectraForPreTraining and
ElectraForMaskedLM: the same checkpoints, the same logits (1e-5, fp32, eval mode, padding in the
batch), in both directions."""

import pytest
import torch

import electra_fast
from electra_fast import ElectraConfig, ElectraDiscriminator, ElectraGenerator

transformers = pytest.importorskip("transformers")

TINY = dict(
    vocab_size=97,
    embedding_size=24,  # differs from the hidden size: embeddings_project is used
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=48,
    max_position_embeddings=40,
)
SMALL = dict(ElectraConfig.preset("small", vocab_size=211, num_hidden_layers=2).__dict__)
CONFIGS = {"tiny": TINY, "small": {k: SMALL[k] for k in TINY}}
PAIRS = [
    (ElectraDiscriminator, "ElectraForPreTraining"),
    (ElectraGenerator, "ElectraForMaskedLM"),
]


def batch(vocab_size, B=3, L=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (B, L), generator=g)
    lengths = torch.tensor([L, 9, 1])
    mask = (torch.arange(L) < lengths[:, None]).long()
    types = (torch.arange(L) >= 5).long().expand(B, L)
    return ids, mask, types


def hf_logits(model, ids, mask, types):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits


def assert_equal_on_tokens(ours, theirs, mask):
    keep = mask.bool()
    torch.testing.assert_close(ours[keep], theirs[keep], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize(("ours_class", "hf_class"), PAIRS)
@pytest.mark.parametrize("unpad", [False, True])
def test_load_transformers_checkpoint(tmp_path, name, ours_class, hf_class, unpad):
    torch.manual_seed(0)
    theirs = getattr(transformers, hf_class)(transformers.ElectraConfig(**CONFIGS[name])).eval()
    theirs.save_pretrained(tmp_path)
    ours = ours_class.from_pretrained(tmp_path, unpad=unpad).eval()
    ids, mask, types = batch(CONFIGS[name]["vocab_size"])
    with torch.no_grad():
        got = ours(ids, mask, types)
    assert_equal_on_tokens(got, hf_logits(theirs, ids, mask, types), mask)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize(("ours_class", "hf_class"), PAIRS)
def test_transformers_loads_our_checkpoint(tmp_path, name, ours_class, hf_class):
    torch.manual_seed(1)
    ours = ours_class(ElectraConfig(**CONFIGS[name])).eval()
    ours.save_pretrained(tmp_path)
    theirs = getattr(transformers, hf_class).from_pretrained(tmp_path).eval()
    ids, mask, types = batch(CONFIGS[name]["vocab_size"], seed=1)
    with torch.no_grad():
        got = ours(ids, mask, types)
    assert_equal_on_tokens(got, hf_logits(theirs, ids, mask, types), mask)


def test_round_trip_keeps_every_parameter(tmp_path):
    model = ElectraGenerator(ElectraConfig(**TINY))
    model.save_pretrained(tmp_path)
    again = ElectraGenerator.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(
        model.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert again.config == model.config


def test_reads_pytorch_model_bin(tmp_path):
    torch.manual_seed(2)
    theirs = transformers.ElectraForPreTraining(transformers.ElectraConfig(**TINY)).eval()
    theirs.config.save_pretrained(tmp_path)
    torch.save(theirs.state_dict(), tmp_path / "pytorch_model.bin")  # the pre-safetensors format
    ours = ElectraDiscriminator.from_pretrained(tmp_path).eval()
    ids, mask, types = batch(TINY["vocab_size"])
    with torch.no_grad():
        assert_equal_on_tokens(ours(ids, mask, types), hf_logits(theirs, ids, mask, types), mask)


def test_checkpoint_that_does_not_fit_lists_the_parameters(tmp_path):
    ElectraGenerator(ElectraConfig(**TINY)).save_pretrained(tmp_path)
    with pytest.raises(ValueError) as error:  # a generator checkpoint has no discriminator head
        ElectraDiscriminator.from_pretrained(tmp_path)
    message = str(error.value)
    assert "discriminator_predictions.dense.weight" in message  # missing
    assert "generator_predictions.dense.weight" in message  # unexpected


def test_config_files_of_released_checkpoints(tmp_path):
    """The original release's config_dis.json / config_gen.json (BERT-style, no embedding_size
    for base-sized models) load as configs."""
    (tmp_path / "config_gen.json").write_text(
        '{"hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024, '
        '"num_hidden_layers": 12, "vocab_size": 30522, "embedding_size": 768, '
        '"max_position_embeddings": 512, "type_vocab_size": 2, "hidden_act": "gelu"}'
    )
    config = ElectraConfig.load(tmp_path / "config_gen.json")
    assert (config.hidden_size, config.embedding_size, config.num_attention_heads) == (256, 768, 4)
    (tmp_path / "config_dis.json").write_text('{"hidden_size": 768, "num_attention_heads": 12}')
    assert ElectraConfig.load(tmp_path / "config_dis.json").embedding_size == 768


def test_package_exports():
    assert electra_fast.ElectraGenerator is ElectraGenerator
