"""ElectraForPretraining: shared embeddings, losses against a hand computation, learning on one
batch, save/load."""

import pytest
import torch
import torch.nn.functional as F

import electra_fast
from electra_fast import ElectraConfig, ElectraForPretraining

SPECIALS = (0, 1, 2, 3)
MASK = 4


def tiny(**overrides):
    fields = dict(
        vocab_size=40,
        embedding_size=32,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        max_position_embeddings=32,
        mask_token_id=MASK,
        special_token_ids=SPECIALS,
        generator_hidden_size=0.5,
        mask_prob=0.25,
    )
    return ElectraConfig(**{**fields, **overrides})


def loss_and_gradients(model, forward):
    """forward()'s output, its loss backpropagated from zeroed gradients, and the gradients of
    the parameters that have one."""
    model.zero_grad()
    out = forward()
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def batch(B=3, L=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 40, (B, L), generator=g)
    ids[:, 0] = 2
    mask = (torch.arange(L) < torch.tensor([L, 11, 6])[:B, None]).long()
    return ids * mask, mask


def test_embeddings_are_shared_and_learn_from_both_losses():
    model = ElectraForPretraining(tiny())
    shared = model.discriminator.encoder.embeddings
    assert model.generator.encoder.embeddings is shared
    assert model.generator.config.hidden_size == 64 and model.generator.config.embedding_size == 32
    ids, mask = batch()
    for loss in ("gen_loss", "disc_loss"):
        model.zero_grad()
        getattr(model(ids, mask, metrics=False), loss).backward()
        assert shared.word.weight.grad.abs().sum() > 0, loss
    untied = ElectraForPretraining(tiny(untied_generator_embeddings=True))
    assert untied.generator.encoder.embeddings is not untied.discriminator.encoder.embeddings


@pytest.mark.parametrize("draws", ["generator", "keys"])
def test_losses_equal_a_hand_computation(draws):
    """The same draws replayed step by step with the public ops and full [B, L, V] logits:
    from the same generator, or with `keys` as the ops' seeds."""
    torch.manual_seed(0)
    model = ElectraForPretraining(tiny()).eval()
    ids, mask = batch()
    keys = torch.tensor([2**62 + 9, -77])
    with torch.no_grad():
        if draws == "generator":
            out = model(ids, mask, generator=torch.Generator().manual_seed(5))
            replay = torch.Generator().manual_seed(5)  # the same key draws, in the same order
            mask_draw, sample_draw = dict(generator=replay), dict(generator=replay)
        else:
            out = model(ids, mask, keys=keys)
            mask_draw, sample_draw = dict(seed=2**62 + 9), dict(seed=-77)
        masked = electra_fast.mask_tokens(
            ids,
            mask,
            mask_token_id=MASK,
            special_token_ids=SPECIALS,
            vocab_size=40,
            mask_prob=0.25,
            **mask_draw,
        )
        logits = model.generator(masked.masked_ids, mask)  # [B, L, V], every position
        at_slots = logits.gather(1, masked.positions[..., None].expand(-1, -1, 40)).double()
        used = masked.weights.double()
        log_probs = at_slots.log_softmax(-1).gather(-1, masked.labels[..., None])[..., 0]
        gen_loss = -(log_probs * used).sum() / (used.sum() + 1e-6)
        labels = torch.where(masked.weights > 0, masked.labels, -100).flatten()
        samples = electra_fast.generator_step(
            logits.gather(1, masked.positions[..., None].expand(-1, -1, 40)).flatten(0, 1),
            labels,
            **sample_draw,
        ).samples.view(masked.positions.shape)
        corrupted = ids.clone()
        for b, s in zip(*torch.nonzero(masked.weights, as_tuple=True), strict=True):
            corrupted[b, masked.positions[b, s]] = samples[b, s]
        replaced = (corrupted != ids).double()
        x = model.discriminator(corrupted, mask).double()
        per_token = F.softplus(x) - replaced * x  # sigmoid cross-entropy, written out
        disc_loss = (per_token * mask).sum() / (mask.sum() + 1e-6)

    torch.testing.assert_close(out.gen_loss.double(), gen_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.disc_loss.double(), disc_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss.double(), gen_loss + 50.0 * disc_loss, rtol=1e-5, atol=1e-5)
    # The discriminator's metrics over the real tokens, counted one by one.
    tokens = [(bool(x[b, i] > 0), bool(replaced[b, i])) for b, i in mask.nonzero().tolist()]
    called = [fake for called_fake, fake in tokens if called_fake]
    spotted = [called_fake for called_fake, fake in tokens if fake]
    want = {
        "disc_accuracy": sum(c == f for c, f in tokens) / len(tokens),
        "disc_precision": sum(called) / len(called),
        "disc_recall": sum(spotted) / len(spotted),
        "replaced_fraction": len(spotted) / len(tokens),
    }
    assert 0 < len(spotted) < len(tokens) and 0 < len(called) < len(tokens)  # all four defined
    for name, value in want.items():
        assert float(out.metrics[name]) == pytest.approx(value, abs=1e-5), name


def evaluate(model, ids, mask):
    """The loss under fixed draws, so that two evaluations compare like with like."""
    model.eval()
    with torch.no_grad():
        draws = [torch.Generator().manual_seed(s) for s in range(8)]
        loss = sum(float(model(ids, mask, generator=g, metrics=False).loss) for g in draws) / 8
    model.train()
    return loss


def test_fifty_steps_on_one_batch_halve_the_loss():
    torch.manual_seed(0)
    model = ElectraForPretraining(tiny(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    ids, mask = batch(B=2, L=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = evaluate(model, ids, mask)
    for _ in range(50):
        loss = model(ids, mask, metrics=False).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = evaluate(model, ids, mask)
    assert after <= 0.5 * before, (before, after)


def test_save_and_load_restore_both_models_with_shared_embeddings(tmp_path):
    torch.manual_seed(1)
    model = ElectraForPretraining(tiny()).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "discriminator" / "model.safetensors").is_file()
    assert (tmp_path / "generator" / "config.json").is_file()
    again = ElectraForPretraining.from_pretrained(tmp_path).eval()
    assert again.generator.encoder.embeddings is again.discriminator.encoder.embeddings
    for (name, a), (_, b) in zip(
        model.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    ids, mask = batch()
    with torch.no_grad():
        first = model(ids, mask, generator=torch.Generator().manual_seed(3))
        second = again(ids, mask, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first.loss, second.loss)


def test_bad_batches_are_refused_once_up_front():
    model = ElectraForPretraining(tiny())
    ids, mask = batch()
    with pytest.raises(ValueError, match="vocab_size"):
        model(ids + 40, mask)
    with pytest.raises(ValueError, match="right padding"):
        model(ids, mask.flip(1))


def test_bad_keys_are_refused():
    model = ElectraForPretraining(tiny())
    ids, mask = batch()
    for keys in (torch.tensor([1]), torch.tensor([1, 2], dtype=torch.int32), [1, 2]):
        with pytest.raises(ValueError, match="keys must be a \\[2\\] int64 tensor"):
            model(ids, mask, keys=keys)
    with pytest.raises(ValueError, match="keys or generator, not both"):
        model(ids, mask, keys=torch.tensor([1, 2]), generator=torch.Generator())


# torch 2.13's inductor calls its own deprecated torch.jit.script_method.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_a_compiled_step_equals_the_eager_one():
    """One graph (fullgraph) for the whole step under inductor, the custom ops and their
    backwards included: the same losses, metrics and gradients as eager for the same keys
    (no dropout, whose random stream inductor draws differently)."""
    torch.manual_seed(0)
    model = ElectraForPretraining(tiny(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    ids, mask = batch()
    keys = torch.tensor([123, 456])

    def run(forward):
        return loss_and_gradients(model, lambda: forward(ids, mask, keys=keys))

    eager, eager_grads = run(model)
    compiled, compiled_grads = run(torch.compile(model, fullgraph=True))
    for name in ("loss", "gen_loss", "disc_loss"):
        torch.testing.assert_close(getattr(compiled, name), getattr(eager, name))
    for name, value in eager.metrics.items():  # the same masks and samples: the same counts
        torch.testing.assert_close(compiled.metrics[name], value, msg=name)
    assert compiled_grads.keys() == eager_grads.keys()
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_step_under_cpu_autocast_follows_fp32():
    """Under CPU bf16 autocast (where LayerNorm returns bf16, unlike CUDA's) the step runs, its
    gradients are the fp32 parameters' dtype, and the generator's loss and gradients (which the
    samples, drawn from bf16 logits, do not touch) follow the fp32 step's within bf16 error."""
    torch.manual_seed(0)
    model = ElectraForPretraining(tiny(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    ids, mask = batch()
    keys = torch.tensor([7, 8])

    def run(autocast):
        def forward():
            with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                return model(ids, mask, keys=keys, metrics=False)

        return loss_and_gradients(model, forward)

    (fp32, fp32_grads), (bf16, bf16_grads) = run(False), run(True)
    torch.testing.assert_close(bf16.gen_loss, fp32.gen_loss, rtol=2e-2, atol=0)
    assert torch.isfinite(bf16.disc_loss)
    for name, grad in bf16_grads.items():
        assert grad.dtype == torch.float32 and torch.isfinite(grad).all(), name
        if name.startswith("generator.") and grad.abs().sum() > 0:
            cosine = F.cosine_similarity(grad.flatten(), fp32_grads[name].flatten(), dim=0)
            assert cosine > 0.99, (name, float(cosine))
