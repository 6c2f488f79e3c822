"""The encoder: padded and packed runs agree, padding changes nothing for the real tokens, and
bad batches are refused with the argument named."""

import pytest
import torch

from electra_fast import ElectraConfig, ElectraDiscriminator, _extension

TINY = ElectraConfig(
    vocab_size=50,
    embedding_size=16,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=24,
)


def test_padding_does_not_change_real_tokens():
    torch.manual_seed(0)
    model = ElectraDiscriminator(TINY).eval()
    ids = torch.randint(0, 50, (1, 10))
    padded = torch.cat([ids, torch.zeros(1, 6, dtype=torch.long)], 1)
    mask = (torch.arange(16) < 10).long()[None]
    with torch.no_grad():
        alone, with_padding = model(ids), model(padded, mask)
    torch.testing.assert_close(with_padding[:, :10], alone)


def test_unpadded_encoder_equals_padded_one():
    """Packing the real tokens (config.unpad) computes what the padded layout computes for
    them. Dropout draws its masks over different shapes in the two layouts, so equality is
    checked in eval mode; in training both must run and stay finite."""
    torch.manual_seed(0)
    padded_model = ElectraDiscriminator(TINY).train()
    packed_model = ElectraDiscriminator(ElectraConfig(**{**TINY.__dict__, "unpad": True})).train()
    packed_model.load_state_dict(padded_model.state_dict())
    ids = torch.randint(0, 50, (3, 12))
    mask = (torch.arange(12) < torch.tensor([[12], [5], [1]])).long()
    torch.manual_seed(7)
    a = padded_model(ids, mask)
    torch.manual_seed(7)
    b = packed_model(ids, mask)
    keep = mask.bool()
    assert torch.isfinite(a[keep]).all() and torch.isfinite(b[keep]).all()
    padded_model.eval(), packed_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(padded_model(ids, mask)[keep], packed_model(ids, mask)[keep])


@pytest.mark.parametrize("unpad", [False, True])
def test_the_layers_run_their_matmuls_on_token_rows(unpad):
    """The layers take the tokens' rows [N, H]: a matmul of a 3-D input would be a view, the
    product and an _unsafe_view back, in the forward and again in the backward. A layer more
    adds no _unsafe_view, and five views: qkv split into heads and the attention's output
    joined back, in the forward and their gradients' in the backward, and the one addmm's
    backward makes of the qkv bias's gradient (before, 3-D activations: 18 views and three
    _unsafe_views)."""
    from tests.model.test_casts import Calls

    if not _extension.use_kernel("attention_qkv_forward", torch.device("cpu")):
        pytest.skip("the plain-torch attention (ELECTRA_FAST_REFERENCE=1) has views of its own")

    def count(layers):
        torch.manual_seed(0)
        config = ElectraConfig(**{**TINY.__dict__, "num_hidden_layers": layers, "unpad": unpad})
        model = ElectraDiscriminator(config)
        ids = torch.randint(0, 50, (3, 12))
        mask = (torch.arange(12) < torch.tensor([[12], [5], [1]])).long()
        with Calls() as calls:
            model(ids, mask).sum().backward()
        return calls.calls

    one, two = count(1), count(2)
    assert two["_unsafe_view"] == one["_unsafe_view"]
    assert two["view"] - one["view"] == 5, (one["view"], two["view"])


def test_each_dropout_of_each_layer_has_its_own_key_from_one_draw(monkeypatch):
    """In training the layers' dropout keys (attention, the two blocks' outputs) are one draw,
    a different key for each; in eval, or without dropout, nothing is drawn."""
    from electra_fast.model import modeling

    seeds, draws = [], []

    def attention(*args, seed=None, **kwargs):
        seeds.append(("attention", seed))
        return real_attention(*args, seed=seed, **kwargs)

    def add_norm(*args, seed=None, **kwargs):
        seeds.append(("block", seed))
        return real_add_norm(*args, seed=seed, **kwargs)

    def draw(*args):
        draws.append(real_draw(*args))
        return draws[-1]

    real_attention, real_add_norm = modeling.attention_qkvpacked, modeling.dropout_add_layer_norm
    real_draw = modeling.draw_philox_keys
    monkeypatch.setattr(modeling, "attention_qkvpacked", attention)
    monkeypatch.setattr(modeling, "dropout_add_layer_norm", add_norm)
    monkeypatch.setattr(modeling, "draw_philox_keys", draw)
    config = ElectraConfig(**{**TINY.__dict__, "num_hidden_layers": 3})
    model = ElectraDiscriminator(config).train()
    ids = torch.randint(0, 50, (2, 9))
    model(ids)
    assert len(draws) == 1 and draws[0].shape == (3, 3)
    assert [kind for kind, _ in seeds] == ["attention", "block", "block"] * 3
    assert torch.equal(torch.stack([seed for _, seed in seeds]), draws[0].flatten())
    assert len(set(draws[0].flatten().tolist())) == 9
    seeds.clear()
    model.eval()(ids)
    no_dropout = {"attention_probs_dropout_prob": 0.0, "hidden_dropout_prob": 0.0}
    ElectraDiscriminator(ElectraConfig(**{**TINY.__dict__, **no_dropout})).train()(ids)
    assert [seed for _, seed in seeds] == [None] * 15 and len(draws) == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        (dict(input_ids=torch.full((1, 4), 50)), ValueError, "vocab_size"),
        (dict(input_ids=torch.zeros(1, 25, dtype=torch.long)), ValueError, "max_position"),
        (dict(input_ids=torch.zeros(4, dtype=torch.long)), ValueError, "input_ids"),
        (dict(input_ids=torch.zeros(1, 4)), TypeError, "input_ids"),
        (dict(attention_mask=torch.ones(1, 3, dtype=torch.long)), ValueError, "attention_mask"),
        (dict(token_type_ids=torch.zeros(2, 4, dtype=torch.long)), ValueError, "token_type_ids"),
        (dict(attention_mask=torch.tensor([[0, 1, 1, 1]])), ValueError, "right padding"),
    ],
)
def test_bad_batch_names_the_argument(kwargs, error, words):
    model = ElectraDiscriminator(TINY)
    args = dict(input_ids=torch.zeros(1, 4, dtype=torch.long))
    args.update(kwargs)
    with pytest.raises(error, match=words):
        model(**args)


class SavedBytes(torch.autograd.graph.saved_tensors_hooks):
    """Counts the bytes autograd saves for the backward while active. Inside a checkpointed
    layer, the checkpoint's own hooks take the place of these (and keep nothing)."""

    def __init__(self):
        self.bytes = 0

        def pack(t):
            self.bytes += t.numel() * t.element_size()
            return t

        super().__init__(pack, lambda t: t)


def count_recomputed_layers(monkeypatch) -> list:
    """A list that grows by one at each layer an encoder checkpoints."""
    from electra_fast.model import modeling

    calls, checkpoint = [], modeling.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(modeling, "checkpoint", counting)
    return calls


@pytest.mark.parametrize("unpad", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients_from_less_saved(unpad, monkeypatch):
    """With dropout on, a checkpointed encoder's second forward must draw the masks of the
    first: loss and every gradient equal those of the same model without checkpointing, while
    autograd keeps a fraction of the activations."""
    from electra_fast.model import set_gradient_checkpointing

    config = ElectraConfig(**{**TINY.__dict__, "num_hidden_layers": 4, "unpad": unpad})
    torch.manual_seed(0)
    plain = ElectraDiscriminator(config).train()
    checkpointed = ElectraDiscriminator(config).train()
    checkpointed.load_state_dict(plain.state_dict())
    set_gradient_checkpointing(checkpointed)
    recomputed = count_recomputed_layers(monkeypatch)
    ids = torch.randint(0, 50, (3, 16))
    mask = (torch.arange(16) < torch.tensor([[16], [9], [4]])).long()

    def run(model):
        torch.manual_seed(5)  # the same dropout keys for both
        saved = SavedBytes()
        with saved:
            loss = model(ids, mask)[mask.bool()].square().mean()
        loss.backward()
        return loss, {n: p.grad for n, p in model.named_parameters()}, saved.bytes

    loss, grads, kept = run(plain)
    loss_again, grads_again, kept_again = run(checkpointed)
    assert loss_again == loss
    for name, grad in grads.items():
        torch.testing.assert_close(grads_again[name], grad, rtol=1e-6, atol=1e-7, msg=name)
    assert kept_again < kept / 4, (kept_again, kept)
    assert len(recomputed) == 4
    # Off again, or in eval, the model saves what it saved before.
    set_gradient_checkpointing(checkpointed, False)
    assert run(checkpointed)[2] == kept
