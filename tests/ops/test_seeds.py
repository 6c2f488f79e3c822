"""Every random op's `seed`: an int and the same key as a 0-d int64 tensor give the same result,
on the kernels and the references; a tensor seed enters a compiled function as an input (one
compilation serves every key); a bad seed is an error that names it."""

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import electra_fast


def masking(device):
    ids = torch.randint(4, 50, (3, 20), generator=torch.Generator().manual_seed(0)).to(device)
    return lambda seed: electra_fast.mask_tokens(
        ids, None, mask_token_id=1, special_token_ids=[0, 2, 3], vocab_size=50, mask_prob=0.3,
        random_prob=0.1, seed=seed,
    )  # fmt: skip


def step(device):
    logits = torch.randn(6, 37, generator=torch.Generator().manual_seed(1)).to(device)
    labels = torch.arange(6, device=device)
    return lambda seed: electra_fast.generator_step(logits, labels, seed=seed)


def linear_step(device):
    g = torch.Generator().manual_seed(2)
    hidden, weight = torch.randn(6, 8, generator=g).to(device), torch.randn(37, 8, generator=g)
    weight, labels = weight.to(device), torch.arange(6, device=device)
    return lambda seed: electra_fast.generator_step_linear(
        hidden, weight, None, labels, seed=seed, vocab_tile=16
    )


def attention(device):
    q, k, v = torch.randn(3, 2, 9, 2, 32, generator=torch.Generator().manual_seed(3)).to(device)
    return lambda seed: electra_fast.attention(q, k, v, dropout_p=0.3, seed=seed)


OPS = [masking, step, linear_step, attention]


def outputs(result):
    return [result] if isinstance(result, torch.Tensor) else list(result)


@pytest.mark.parametrize("reference", [False, True], ids=["kernel", "reference"])
@pytest.mark.parametrize("op", OPS, ids=lambda op: op.__name__)
def test_a_tensor_seed_is_the_int_seed(monkeypatch, op, reference):
    from electra_fast import _extension

    monkeypatch.setattr(_extension, "FORCE_REFERENCE", reference)
    op = op("cpu")
    # 2^63 + 5 as an int is the tensor's -2^63 + 5: the key's 64 bits, read as signed.
    for as_int, as_tensor in ((7, torch.tensor(7)), (2**63 + 5, torch.tensor(-(2**63) + 5))):
        for got, want in zip(outputs(op(as_tensor)), outputs(op(as_int)), strict=True):
            assert torch.equal(got, want)
    assert not all(
        torch.equal(a, b) for a, b in zip(outputs(op(7)), outputs(op(8)), strict=True)
    ), "different seeds should give different draws"


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.__name__)
def test_a_tensor_seed_is_an_input_of_a_compiled_function(op):
    # The lambda below is one code object for every op: without a reset, the frames compiled
    # for the other ops make dynamo treat its shapes as dynamic, and torch 2.4 cannot evaluate
    # its guards on a float computed from a dynamic size (attention's `head_dim ** -0.5`), so
    # it compiles again at every call.
    torch._dynamo.reset()
    op = op("cpu")
    counter = CompileCounter()
    compiled = torch.compile(lambda seed: outputs(op(seed)), fullgraph=True, backend=counter)
    for key in (3, 4, 5):
        for got, want in zip(compiled(torch.tensor(key)), outputs(op(key)), strict=True):
            assert torch.equal(got, want)
    assert counter.frame_count == 1


@pytest.mark.parametrize(
    ("seed", "error", "match"),
    [
        (torch.tensor([7]), ValueError, "seed must be a 0-d int64 tensor.*shape \\(1,\\)"),
        (torch.tensor(7, dtype=torch.int32), ValueError, "seed must be a 0-d int64.*int32"),
        (torch.tensor(7.0), ValueError, "seed must be a 0-d int64.*float32"),
        (7.5, TypeError, "seed must be an int or a 0-d int64 tensor"),
        ("7", TypeError, "seed must be an int or a 0-d int64 tensor"),
        (2**64, ValueError, "seed must fit in 64 bits"),
    ],
)
@pytest.mark.parametrize("op", OPS, ids=lambda op: op.__name__)
def test_bad_seeds_are_refused(op, seed, error, match):
    with pytest.raises(error, match=match):
        op("cpu")(seed)


def test_a_seed_and_a_generator_together_are_refused():
    ids = torch.randint(4, 50, (2, 10))
    with pytest.raises(ValueError, match="seed or generator, not both"):
        electra_fast.mask_tokens(
            ids, None, mask_token_id=1, special_token_ids=[0], vocab_size=50,
            generator=torch.Generator(), seed=torch.tensor(1),
        )  # fmt: skip


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("op", OPS, ids=lambda op: op.__name__)
def test_a_seed_on_another_device_is_refused(op):
    with pytest.raises(ValueError, match="seed must be on .* device cuda"):
        op("cuda")(torch.tensor(7))
