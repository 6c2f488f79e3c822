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
from electra_fast.model.finetuning import answer_mask
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
    if ours_class is ElectraForQuestionAnswering:
        # Ours puts -1000 on the positions that cannot hold an answer (the question), as the
        # official head does; everywhere else the logits are Hugging Face's.
        keep = answer_mask(mask, types)
        assert (got[~keep] < -900).all()
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


def qa_model(**arguments):
    torch.manual_seed(4)
    return ElectraForQuestionAnswering(ElectraConfig(**TINY), **arguments).eval()


def test_the_joint_head_is_the_official_formula():
    net = qa_model(joint=True, answerable=True)
    ids, mask, types = batch(TINY["vocab_size"])
    starts = torch.tensor([3, 0, 5])
    with torch.no_grad():
        spans = net(ids, mask, types, start_positions=starts)
        hidden = net.encoder(ids, mask, types)
    head, allowed = net.qa_head, answer_mask(mask, types)
    # As the official head builds them: the start token's vector tiled beside every token,
    # then dense(512, gelu) and dense(1), and -1000 outside the context and [CLS].
    tiled = hidden[torch.arange(3), starts][:, None].expand_as(hidden)
    end = head.end(F.gelu(head.end_hidden(torch.cat([tiled, hidden], -1)))).squeeze(-1)
    end = end + (allowed.float() - 1) * 1000
    start = head.start(hidden).squeeze(-1) + (allowed.float() - 1) * 1000
    torch.testing.assert_close(spans.start, start)
    torch.testing.assert_close(spans.end, end, rtol=1e-5, atol=1e-4)
    # The answerable classifier: [CLS] beside the start-probability-weighted mean of the tokens.
    pooled = (start.softmax(-1)[..., None] * hidden).sum(1)
    a = net.answerable_head
    want = a.output(F.gelu(a.hidden(torch.cat([hidden[:, 0], pooled], -1)))).squeeze(-1)
    torch.testing.assert_close(spans.answerable, want, rtol=1e-5, atol=1e-5)


def test_beam_search_keeps_the_best_starts_and_their_best_ends():
    net = qa_model(joint=True)
    ids, mask, types = batch(TINY["vocab_size"])
    beam = net.beam_search(ids, mask, types, beam=4)
    with torch.no_grad():
        start = net(ids, mask, types, start_positions=torch.zeros(3, dtype=torch.long)).start
    want = start.log_softmax(-1).topk(4)
    torch.testing.assert_close(beam.start_log_probs, want.values)
    assert torch.equal(beam.start_index, want.indices)
    for i in range(4):  # each kept start, run through the training path on its own
        with torch.no_grad():
            end = net(ids, mask, types, start_positions=beam.start_index[:, i]).end
        want = end.log_softmax(-1).topk(4)
        torch.testing.assert_close(beam.end_log_probs[:, i], want.values, rtol=1e-5, atol=1e-5)
        assert torch.equal(beam.end_index[:, i], want.indices)
    with pytest.raises(ValueError, match="needs start_positions"):
        net(ids, mask, types)
    with pytest.raises(ValueError, match="needs the joint head"):
        qa_model().beam_search(ids, mask, types)


def test_a_joint_head_saves_and_loads(tmp_path):
    net = qa_model(joint=True, answerable=True)
    net.save_pretrained(tmp_path)
    again = ElectraForQuestionAnswering.from_pretrained(tmp_path)
    assert again.joint and again.answerable_head is not None
    for name, tensor in net.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
