"""mask_tokens: our kernel vs our torch reference vs Hugging Face's DataCollatorForLanguageModeling
masking, at ELECTRA-small's B=128, L=128 and at B=32, L=512."""

import pytest
import torch

import electra_fast
from benchmarks.conftest import describe, synchronised
from electra_fast import _extension

VOCAB, PAD, UNK, CLS, SEP, MASK = 30522, 0, 100, 101, 102, 103
SPECIALS = [PAD, UNK, CLS, SEP]
SIZES = [(128, 128), (32, 512)]


def batch(B: int, L: int, device: torch.device):
    """[CLS] text [SEP] rows with lengths uniform in [L/2, L], then padding."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, VOCAB, (B, L), generator=g)
    lengths = torch.randint(L // 2, L + 1, (B,), generator=g)
    positions = torch.arange(L)
    attention = (positions < lengths[:, None]).long()
    ids[:, 0] = CLS
    ids[positions == lengths[:, None] - 1] = SEP
    ids[attention == 0] = PAD
    return ids.to(device), attention.to(device)


@pytest.mark.parametrize("size", SIZES, ids=[f"B{b}-L{n}" for b, n in SIZES])
@pytest.mark.parametrize("provider", ["electra_fast", "reference"])
def test_mask_tokens(benchmark, monkeypatch, device, provider, size):
    if provider == "electra_fast" and not _extension.has_kernel("mask_tokens", device.type):
        pytest.skip(f"no {device.type} kernel built")
    monkeypatch.setattr(_extension, "FORCE_REFERENCE", provider == "reference")
    ids, attention = batch(*size, device)
    describe(
        benchmark,
        op="mask_tokens",
        provider=provider,
        mode="forward",
        size=f"B={size[0]} L={size[1]}",
        device=device,
    )
    out = benchmark(
        synchronised(
            # check_values=False: the batch's ids are in range by construction, and the check
            # would read them back to the host at each call, a synchronisation the pretraining
            # step (which checks each batch once, on the host) never makes.
            lambda: electra_fast.mask_tokens(
                ids,
                attention,
                mask_token_id=MASK,
                special_token_ids=SPECIALS,
                vocab_size=VOCAB,
                check_values=False,
            ),
            device,
        )
    )
    assert out.weights.sum() > 0


def hf_collator():
    """DataCollatorForLanguageModeling over a word-level tokenizer with BERT's special ids."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {f"w{i}": i for i in range(VOCAB)}
    vocab.update({"[PAD]": PAD, "[UNK]": UNK, "[CLS]": CLS, "[SEP]": SEP, "[MASK]": MASK})
    model = tokenizers.models.WordLevel(vocab, unk_token="[UNK]")
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer(model),
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    return transformers.DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)


@pytest.mark.parametrize("size", SIZES, ids=[f"B{b}-L{n}" for b, n in SIZES])
def test_hf_collator_masking(benchmark, size):
    """The masking step of the collator most replications use (it runs on CPU, in the loader);
    the special-token mask is given, as a fast tokenizer returns it."""
    collator = hf_collator()
    device = torch.device("cpu")
    ids, _ = batch(*size, device)
    specials = torch.isin(ids, torch.tensor(SPECIALS))
    describe(
        benchmark,
        op="mask_tokens",
        provider="hf_collator",
        mode="forward",
        size=f"B={size[0]} L={size[1]}",
        device=device,
    )
    inputs, labels = benchmark(lambda: collator.torch_mask_tokens(ids.clone(), specials))
    assert (labels != -100).any()
