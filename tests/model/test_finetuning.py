"""Finetuning heads: parity with transformers' ElectraFor* classes, starting from a pretrained
discriminator, the official classification head, and the losses."""

import pytest
import torch
import torch.nn.functional as F

from electra_fast import ElectraConfig, ElectraDiscriminator, ElectraForPretraining
from electra_fast.model import (
    ElectraForQuestionAnswering,
    ElectraForSequenceClassification,
    ElectraForTokenClassification,
)
from tests.model.test_hf_parity import TINY, batch

transformers = pytest.importorskip("transformers")


def hf_model(name, **labels):
    torch.manual_seed(0)
    config = transformers.ElectraConfig(**TINY, **labels)
    return getattr(transformers, name)(config).eval()


def hf_outputs(model, ids, mask, types):
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    if hasattr(out, "start_logits"):
        return torch.stack([out.start_logits, out.end_logits], -1)
    return out.logits


def ours_outputs(model, ids, mask, types):
    with torch.no_grad():
        out = model(ids, mask, types)
    return torch.stack(out[:2], -1) if isinstance(out, tuple) else out


@pytest.mark.parametrize(
    ("ours_class", "hf_name", "labels"),
    [
        (ElectraForSequenceClassification, "ElectraForSequenceClassification", dict(num_labels=3)),
        (ElectraForTokenClassification, "ElectraForTokenClassification", dict(num_labels=5)),
        (ElectraForQuestionAnswering, "ElectraForQuestionAnswering", {}),
    ],
)
def test_parity_with_transformers_both_ways(tmp_path, ours_class, hf_name, labels):
    theirs = hf_model(hf_name, **labels)
    theirs.save_pretrained(tmp_path / "theirs")
    ours = ours_class.from_pretrained(tmp_path / "theirs").eval()
    ids, mask, types = batch(TINY["vocab_size"])
    want = hf_outputs(theirs, ids, mask, types)
    got = ours_outputs(ours, ids, mask, types)
    keep = mask.bool() if got.dim() == 3 else slice(None)
    torch.testing.assert_close(got[keep], want[keep], rtol=1e-5, atol=1e-5)

    ours.save_pretrained(tmp_path / "ours")  # and back
    again = getattr(transformers, hf_name).from_pretrained(tmp_path / "ours").eval()
    back = hf_outputs(again, ids, mask, types)
    torch.testing.assert_close(back[keep], want[keep], rtol=1e-5, atol=1e-5)


def test_from_discriminator_takes_the_encoder_and_a_fresh_head(tmp_path):
    torch.manual_seed(3)
    discriminator = ElectraDiscriminator(ElectraConfig(**TINY))
    discriminator.save_pretrained(tmp_path)
    model = ElectraForSequenceClassification.from_discriminator(tmp_path, num_labels=4)
    for name, tensor in discriminator.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[name], tensor), name
    assert model.classifier.out_proj.weight.shape == (4, TINY["hidden_size"])
    # ElectraForPretraining's save directory works too (its discriminator is used).
    pretraining = ElectraForPretraining(ElectraConfig(**TINY, mask_token_id=4))
    pretraining.save_pretrained(tmp_path / "both")
    qa = ElectraForQuestionAnswering.from_discriminator(tmp_path / "both", answerable=True)
    ids, mask, types = batch(TINY["vocab_size"])
    spans = qa(ids, mask, types)
    assert spans.start.shape == ids.shape and spans.answerable.shape == (3,)


def test_from_discriminator_needs_the_whole_encoder(tmp_path):
    discriminator = ElectraDiscriminator(ElectraConfig(**TINY))
    discriminator.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    state = discriminator.state_dict()
    del state["encoder.layers.1.ffn_in.weight"]
    from electra_fast.model import hf

    hf.write_weights(tmp_path, hf.to_hf(state))
    with pytest.raises(ValueError, match=r"missing \['encoder.layers.1.ffn_in.weight'\]"):
        ElectraForTokenClassification.from_discriminator(tmp_path)


def test_official_head_and_losses():
    torch.manual_seed(0)
    model = ElectraForSequenceClassification(ElectraConfig(**TINY), 3, head="electra").eval()
    ids, mask, types = batch(TINY["vocab_size"])
    with torch.no_grad():
        logits = model(ids, mask, types)
        cls = model.encoder(ids, mask, types)[:, 0]
    torch.testing.assert_close(logits, cls @ model.classifier.weight.T + model.classifier.bias)
    labels = torch.tensor([0, 2, 1])
    torch.testing.assert_close(model.loss(logits, labels), F.cross_entropy(logits, labels))
    regression = ElectraForSequenceClassification(ElectraConfig(**TINY), regression=True)
    values = regression(ids, mask, types)
    assert values.shape == (3, 1)
    target = torch.tensor([0.5, -1.0, 2.0])
    torch.testing.assert_close(
        regression.loss(values, target), ((values[:, 0] - target) ** 2).mean()
    )
    with pytest.raises(ValueError, match="head"):
        ElectraForSequenceClassification(ElectraConfig(**TINY), head="pooler")


def test_round_trip_keeps_the_head_kind(tmp_path):
    model = ElectraForSequenceClassification(ElectraConfig(**TINY), regression=True, head="electra")
    model.save_pretrained(tmp_path)
    again = ElectraForSequenceClassification.from_pretrained(tmp_path)
    assert (again.head, again.regression, again.num_labels) == ("electra", True, 1)
