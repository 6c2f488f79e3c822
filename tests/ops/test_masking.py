"""mask_tokens: semantics, kernel == reference, reproducibility, opcheck, compile, bad input."""

import pytest
import torch

import electra_fast
from electra_fast import _extension
from tests.ops.masking_cases import (
    CLS,
    MASK,
    PAD,
    SEP,
    SPECIALS,
    check_semantics,
    expected_count,
    run,
    sample_inputs,
)

OP = "mask_tokens"
needs_kernel = pytest.mark.skipif(
    not _extension.has_kernel("mask_tokens", "cpu"), reason="the extension is not built"
)
SHAPES = [(1, 1), (1, 128), (3, 7), (5, 77), (17, 128), (4, 300), (2, 512)]


@pytest.mark.parametrize(("batch", "length"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_fixed_count_semantics(implementation, device, batch, length, dtype):
    ids, attention = sample_inputs(batch, length, device=device, dtype=dtype)
    slots = max(1, int(0.155 * length))
    out = run(implementation, ids, attention, seed=7, max_predictions=slots, random_prob=0.1)
    counts = [
        expected_count(
            int(attention[b].sum()),
            int(
                (
                    (attention[b] != 0)
                    & ~torch.isin(ids[b], torch.tensor(SPECIALS + [MASK], device=device))
                ).sum()
            ),
            0.15,
            slots,
        )
        for b in range(batch)
    ]
    check_semantics(
        ids,
        attention,
        out,
        specials=SPECIALS,
        mask_token_id=MASK,
        vocab_size=1000,
        counts=counts,
        random_prob=0.1,
    )


@pytest.mark.parametrize(("batch", "length"), SHAPES)
def test_bernoulli_semantics(implementation, device, batch, length):
    ids, attention = sample_inputs(batch, length, device=device)
    out = run(
        implementation,
        ids,
        attention,
        seed=11,
        mask_prob=0.3,
        bernoulli=True,
        max_predictions=max(1, length // 5),
        replace_prob=0.8,
        random_prob=0.1,
    )
    check_semantics(
        ids, attention, out, specials=SPECIALS, mask_token_id=MASK, vocab_size=1000, random_prob=0.1
    )


def test_fewer_candidates_than_count_takes_them_all(implementation, device):
    ids = torch.tensor([[CLS, 10, SEP, SEP, SEP, SEP, SEP, SEP, SEP, SEP]], device=device)
    attention = torch.ones_like(ids)
    out = run(implementation, ids, attention, seed=3, mask_prob=0.5, max_predictions=5)
    assert out[1][0].tolist() == [1, 0, 0, 0, 0]
    assert out[3][0].tolist() == [1, 0, 0, 0, 0]
    assert out[2][0, 0] == 10


def test_official_rounding_is_half_to_even(implementation, device):
    # 10 tokens at 0.25 is 2.5, which tf.round takes to 2; 30 at 0.25 is 7.5, taken to 8.
    for length, expected in ((10, 2), (30, 8)):
        ids = torch.arange(10, 10 + length, device=device)[None]
        out = run(
            implementation,
            ids,
            torch.ones_like(ids),
            seed=1,
            mask_prob=0.25,
            max_predictions=length,
        )
        assert int(out[3].sum()) == expected


@needs_kernel
@pytest.mark.parametrize("bernoulli", [False, True])
@pytest.mark.parametrize(("batch", "length"), SHAPES)
def test_kernel_equals_reference(device, batch, length, bernoulli):
    if not _extension.has_kernel("mask_tokens", device.type):
        pytest.skip(f"no {device.type} kernel")
    ids, attention = sample_inputs(batch, length, device=device)
    for seed in (0, 1, -5, 2**62 + 12345):
        kwargs = dict(
            seed=seed,
            bernoulli=bernoulli,
            mask_prob=0.4 if bernoulli else 0.15,
            replace_prob=0.8,
            random_prob=0.1,
        )
        for got, want in zip(
            run("kernel", ids, attention, **kwargs),
            run("reference", ids, attention, **kwargs),
            strict=True,
        ):
            assert torch.equal(got, want)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("batch", "length"), [*SHAPES, (128, 128), (32, 512), (2, 6016)])
@pytest.mark.parametrize("bernoulli", [False, True])
def test_cuda_equals_cpu(implementation, batch, length, bernoulli):
    ids, attention = sample_inputs(batch, length)
    kwargs = dict(seed=2024, bernoulli=bernoulli, replace_prob=0.8, random_prob=0.1)
    on_cpu = run(implementation, ids, attention, **kwargs)
    on_gpu = run(implementation, ids.cuda(), attention.cuda(), **kwargs)
    for cpu_out, gpu_out in zip(on_cpu, on_gpu, strict=True):
        assert torch.equal(cpu_out, gpu_out.cpu())


def public_call(ids, attention, **kwargs):
    return electra_fast.mask_tokens(
        ids, attention, mask_token_id=MASK, special_token_ids=SPECIALS, vocab_size=1000, **kwargs
    )


def test_same_seed_same_output(device):
    ids, attention = sample_inputs(8, 64, device=device)
    torch.manual_seed(5)
    first = public_call(ids, attention)
    second_draw = public_call(ids, attention)
    torch.manual_seed(5)
    again = public_call(ids, attention)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first.positions, second_draw.positions)
    g1, g2 = (torch.Generator(device=device).manual_seed(9) for _ in range(2))
    assert torch.equal(
        public_call(ids, attention, generator=g1).masked_ids,
        public_call(ids, attention, generator=g2).masked_ids,
    )
    assert torch.equal(
        public_call(ids, attention, seed=123).positions,
        public_call(ids, attention, seed=123).positions,
    )


def ops_called(fn):
    """fn's result, and the names of the electra_fast ops it ran."""
    with torch.profiler.profile() as profile:
        result = fn()
    names = {event.name for event in profile.events()}
    return result, {name for name in names if name.startswith("electra_fast")}


def test_forced_reference_gives_the_kernels_result(monkeypatch, device):
    ids, attention = sample_inputs(6, 50, device=device)
    dispatched, ran = ops_called(lambda: public_call(ids, attention, seed=77))
    if _extension.has_kernel("mask_tokens", device.type):
        assert ran == {"electra_fast::mask_tokens"}
    else:
        assert ran == {"electra_fast_ref::mask_tokens"}
    monkeypatch.setattr(_extension, "FORCE_REFERENCE", True)
    forced, ran = ops_called(lambda: public_call(ids, attention, seed=77))
    assert ran == {"electra_fast_ref::mask_tokens"}
    assert all(torch.equal(a, b) for a, b in zip(dispatched, forced, strict=True))


def test_default_slots_follow_the_official_formula():
    ids, attention = sample_inputs(2, 128)
    assert public_call(ids, attention).positions.shape == (2, int((0.15 + 0.005) * 128))
    assert public_call(ids, None, max_predictions=5).positions.shape == (2, 5)


@pytest.mark.parametrize("library", ["electra_fast", "electra_fast_ref"])
def test_opcheck(device, library):
    if library == "electra_fast" and not _extension.has_kernel("mask_tokens", device.type):
        pytest.skip(f"no {device.type} kernel")
    op = getattr(torch.ops, library).mask_tokens.default
    ids, attention = sample_inputs(4, 33, device=device)
    key = torch.tensor(99, device=device)
    for bernoulli in (False, True):
        args = (ids, attention, key, SPECIALS, MASK, 1000, 0.2, 6, 0.8, 0.1, bernoulli, 3)
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("reference", [False, True], ids=["dispatch", "reference"])
def test_compile_fullgraph(monkeypatch, backend, reference):
    monkeypatch.setattr(_extension, "FORCE_REFERENCE", reference)
    ids, attention = sample_inputs(4, 40)

    def step(ids, attention, seed=None):
        out = public_call(ids, attention, seed=seed)
        return out.masked_ids * 2, out.weights.sum(), out.positions

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    got, want = compiled(ids, attention, 42), step(ids, attention, 42)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    # With the key drawn inside the graph, every call draws a new one: it is not baked in.
    first, second = compiled(ids, attention), compiled(ids, attention)
    assert not torch.equal(first[2], second[2])
    assert torch.equal(first[1], want[1])  # the count per row does not depend on the key


BAD_CALLS = [  # (description, arguments to change, exception, words the message must contain)
    ("float ids", dict(input_ids=torch.zeros(2, 8)), TypeError, "input_ids"),
    ("1-D ids", dict(input_ids=torch.zeros(8, dtype=torch.long)), ValueError, "input_ids"),
    (
        "mask shape",
        dict(attention_mask=torch.ones(2, 7, dtype=torch.long)),
        ValueError,
        "attention_mask",
    ),
    ("float mask", dict(attention_mask=torch.ones(2, 8)), TypeError, "attention_mask"),
    ("mask_prob 0", dict(mask_prob=0.0), ValueError, "mask_prob"),
    ("mask_prob > 1", dict(mask_prob=1.5), ValueError, "mask_prob"),
    ("no slots", dict(mask_prob=0.05), ValueError, "max_predictions"),
    ("negative slots", dict(max_predictions=-1), ValueError, "max_predictions"),
    ("prob sum", dict(replace_prob=0.8, random_prob=0.3), ValueError, "random_prob"),
    ("negative prob", dict(random_prob=-0.1), ValueError, "random_prob"),
    ("strategy", dict(strategy="span"), ValueError, "strategy"),
    ("id too big", dict(input_ids=torch.full((2, 8), 1000)), ValueError, "input_ids"),
    ("negative id", dict(input_ids=torch.full((2, 8), -1)), ValueError, "input_ids"),
    ("mask id", dict(mask_token_id=1000), ValueError, "mask_token_id"),
    ("special id", dict(special_token_ids=[0, 5000]), ValueError, "special_token_ids"),
    ("seed", dict(seed=2**64), ValueError, "seed"),
    (
        "all special",
        dict(input_ids=torch.full((2, 8), 2), vocab_size=4, random_prob=0.1, replace_prob=0.8),
        ValueError,
        "random_prob > 0 needs a non-special token",
    ),
]


@pytest.mark.parametrize("reference", [False, True], ids=["dispatch", "reference"])
@pytest.mark.parametrize(
    ("case", "change", "error", "words"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS]
)
def test_bad_input(monkeypatch, reference, case, change, error, words):
    monkeypatch.setattr(_extension, "FORCE_REFERENCE", reference)
    kwargs = dict(
        input_ids=torch.full((2, 8), 7),
        attention_mask=torch.ones(2, 8, dtype=torch.long),
        mask_token_id=MASK,
        special_token_ids=[PAD, CLS, SEP],
        vocab_size=1000,
        mask_prob=0.3,
    )
    kwargs.update(change)
    with pytest.raises(error, match=words):
        electra_fast.mask_tokens(kwargs.pop("input_ids"), kwargs.pop("attention_mask"), **kwargs)


@needs_kernel
def test_op_checks_its_own_arguments():
    """Direct callers of torch.ops get the same clear errors from the C++ boundary."""
    ids, attention = sample_inputs(2, 16)
    key = torch.tensor(1)
    op = torch.ops.electra_fast.mask_tokens.default
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        op(ids, attention[:, :4], key, SPECIALS, MASK, 1000, 0.15, 2, 0.85, 0.0, False, 0)
    with pytest.raises(ValueError, match="mask_prob"):
        op(ids, attention, key, SPECIALS, MASK, 1000, 0.0, 2, 0.85, 0.0, False, 0)
    with pytest.raises(ValueError, match="input_ids must be in"):
        op(ids + 1000, attention, key, SPECIALS, MASK, 1000, 0.15, 2, 0.85, 0.0, False, 0)
    with pytest.raises(TypeError, match="seed must be int64"):
        op(ids, attention, key.int(), SPECIALS, MASK, 1000, 0.15, 2, 0.85, 0.0, False, 0)
    with pytest.raises(ValueError, match="at most 63"):
        op(ids, attention, key, list(range(4, 80)), MASK, 1000, 0.15, 2, 0.85, 0.0, False, 0)
    with pytest.raises(ValueError, match="row_offset"):
        op(ids, attention, key, SPECIALS, MASK, 1000, 0.15, 2, 0.85, 0.0, False, -1)


@pytest.mark.parametrize("bernoulli", [False, True])
def test_a_split_batch_masks_as_the_whole(implementation, device, bernoulli):
    """Ranks that share a key and pass row_offset = rank * B get, together, exactly the
    single-process result: a data-parallel run masks as one process would."""
    ids, attention = sample_inputs(8, 40, device=device)
    kwargs = dict(seed=13, bernoulli=bernoulli, random_prob=0.1)
    whole = run(implementation, ids, attention, **kwargs)
    halves = [
        run(implementation, ids[r * 4 : (r + 1) * 4], attention[r * 4 : (r + 1) * 4],
            row_offset=4 * r, **kwargs)
        for r in range(2)
    ]  # fmt: skip
    for got, want in zip(zip(*halves, strict=True), whole, strict=True):
        assert torch.equal(torch.cat(got), want)
