"""prepare and PretrainingDataset: determinism across process counts, compressed inputs, the
uint16/int32 switch, bad input, atomic and resumable writes, batches and resumable sampling."""

import bz2
import filecmp
import gzip
import lzma
import os
import random

import numpy as np
import pytest
import torch

from electra_fast import tokenization
from electra_fast.data import (
    PretrainingDataset,
    ResumableSampler,
    collate_packed,
    collate_padded,
    prepare,
)
from electra_fast.data.examples import ExampleBuilder
from electra_fast.data.prepare import ENCODE_CHUNK
from tests.data.corpus_cases import corpus_text, documents, wordpiece


@pytest.fixture
def corpus(tmp_path):
    directory = tmp_path / "corpus"
    directory.mkdir()
    (directory / "a.txt").write_text(corpus_text(documents(300, seed=1)))
    (directory / "b.txt").write_text(corpus_text(documents(50, seed=2)))
    return directory


def run(inputs, tokenizer, out, **kwargs):
    kwargs.setdefault("max_seq_length", 32)
    kwargs.setdefault("unit_bytes", 3000)
    return prepare([str(i) for i in inputs], str(tokenizer), str(out), progress=False, **kwargs)


def test_shards_are_identical_whatever_the_process_count(tmp_path, corpus):
    tokenizer = wordpiece(tmp_path / "tok")
    one = run([corpus], tokenizer, tmp_path / "one")
    two = run([corpus], tokenizer, tmp_path / "two", num_processes=2)
    assert one["counts"] == two["counts"] and len(one["shards"]) > 4
    names = sorted(os.listdir(tmp_path / "one" / "shards"))
    assert names == sorted(os.listdir(tmp_path / "two" / "shards"))
    for name in names:
        assert filecmp.cmp(tmp_path / "one/shards" / name, tmp_path / "two/shards" / name, False)
    other_seed = run([corpus], tokenizer, tmp_path / "seed", seed=1)
    assert other_seed["counts"]["tokens"] != one["counts"]["tokens"] or not filecmp.cmp(
        tmp_path / "one/shards" / names[1], tmp_path / "seed/shards" / names[1], False
    )
    # The fingerprint the machines of a run compare: the same examples in other directories
    # (with other paths in their manifests) agree, another seed's do not.
    fingerprint = PretrainingDataset(tmp_path / "one").fingerprint()
    assert PretrainingDataset(tmp_path / "two").fingerprint() == fingerprint
    assert PretrainingDataset(tmp_path / "seed").fingerprint() != fingerprint


def test_examples_are_the_builders_fed_one_line_at_a_time(tmp_path, corpus):
    """prepare tokenises lines in chunks (encode_batch); the oracle is ExampleBuilder.add_line,
    which encodes one line per call, with the unit's random stream ("seed/file/unit"). The
    file has more lines than a chunk, and documents that straddle chunks."""
    text = (corpus / "a.txt").read_text()
    assert len(text.splitlines()) > 3 * ENCODE_CHUNK
    directory = wordpiece(tmp_path / "tok")
    run([corpus / "a.txt"], directory, tmp_path / "out", unit_bytes=10**9)
    tok = tokenization.load(directory)
    rng = random.Random("0/0/0")
    builder = ExampleBuilder(tok.encode, 32, tok.cls_token_id, tok.sep_token_id, rng)
    expected = [builder.add_line(line) for line in text.splitlines()] + [builder.flush()]
    expected = [e for e in expected if e is not None]
    dataset = PretrainingDataset(tmp_path / "out")
    assert len(dataset) == len(expected) > 100
    for i, example in enumerate(expected):
        item = dataset[i]
        assert item["input_ids"].tolist() == example.input_ids
        assert item["token_type_ids"].tolist() == example.token_type_ids()


def test_counts_and_the_examples_reproduce_the_text(tmp_path):
    docs = documents(40, seed=3)
    (tmp_path / "c.txt").write_text(corpus_text(docs))
    tokenizer = wordpiece(tmp_path / "tok")
    manifest = run([tmp_path / "c.txt"], tokenizer, tmp_path / "out", max_seq_length=512)
    counts = manifest["counts"]
    assert counts["documents"] == 40
    assert counts["sentences"] == sum(len(d.split("\n")) for d in docs)
    dataset = PretrainingDataset(tmp_path / "out")
    assert len(dataset) == counts["examples"]
    # With room for every document, each example holds whole documents' words, in order.
    words = [w for d in docs for w in d.split()]
    ids = torch.cat([dataset[i]["input_ids"] for i in range(len(dataset))])
    text_ids = ids[ids > 4] - 5  # drop [PAD] [UNK] [CLS] [SEP] [MASK]; w{i} has id 5 + i
    assert [f"w{i}" for i in text_ids.tolist()] == words


@pytest.mark.parametrize("opener", [gzip.open, bz2.open, lzma.open], ids=["gz", "bz2", "xz"])
def test_compressed_inputs_give_the_plain_examples(tmp_path, opener):
    text = corpus_text(documents(60, seed=4))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "c.txt").write_text(text)
    (tmp_path / "packed").mkdir()
    suffix = {gzip.open: ".gz", bz2.open: ".bz2", lzma.open: ".xz"}[opener]
    with opener(tmp_path / "packed" / f"c.txt{suffix}", "wt") as f:
        f.write(text)
    tokenizer = wordpiece(tmp_path / "tok")
    kwargs = dict(unit_bytes=10**9)  # one unit each, as a compressed file always is
    run([tmp_path / "plain"], tokenizer, tmp_path / "p", **kwargs)
    run([tmp_path / "packed"], tokenizer, tmp_path / "z", **kwargs)
    plain, packed = PretrainingDataset(tmp_path / "p"), PretrainingDataset(tmp_path / "z")
    assert len(plain) == len(packed)
    for i in range(len(plain)):
        assert torch.equal(plain[i]["input_ids"], packed[i]["input_ids"])


def test_token_dtype_switches_at_65536(tmp_path, corpus):
    small = run([corpus], wordpiece(tmp_path / "small"), tmp_path / "s")
    large = run([corpus], wordpiece(tmp_path / "large", extra_words=70_000), tmp_path / "l")
    first = small["shards"][0]["name"]
    assert np.load(tmp_path / f"s/shards/{first}.ids.npy").dtype == np.uint16
    assert np.load(tmp_path / f"l/shards/{first}.ids.npy").dtype == np.int32
    assert large["vocab_size"] > 65536


def test_invalid_utf8_empty_files_and_documents(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.txt").write_bytes(b"w1 w2 \xff\xfe w3\n\n\n\nw4 w5\n")
    (tmp_path / "in" / "empty.txt").write_bytes(b"")
    manifest = run([tmp_path / "in"], wordpiece(tmp_path / "tok"), tmp_path / "out")
    assert manifest["counts"]["replaced_bytes"] == 2
    assert manifest["counts"]["documents"] == 2
    dataset = PretrainingDataset(tmp_path / "out")
    assert len(dataset) == 2  # one example per document, none from the empty file


def test_bad_input_is_named(tmp_path, corpus):
    tokenizer = wordpiece(tmp_path / "tok")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        run([tmp_path / "missing.txt"], tokenizer, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="pattern"):
        run([str(tmp_path / "*.nothing")], tokenizer, tmp_path / "out")
    with pytest.raises(ValueError, match="max_seq_length"):
        run([corpus], tokenizer, tmp_path / "out", max_seq_length=4)
    (tmp_path / "blank.txt").write_text("\n \n\t\n")
    with pytest.raises(ValueError, match="no examples: the 1 input file"):
        run([tmp_path / "blank.txt"], tokenizer, tmp_path / "blank")
    assert not (tmp_path / "blank" / "manifest.json").exists()
    run([corpus], tokenizer, tmp_path / "out")
    with pytest.raises(ValueError, match="other settings"):
        run([corpus], tokenizer, tmp_path / "out", max_seq_length=64)
    other = wordpiece(tmp_path / "other", extra_words=3)
    with pytest.raises(ValueError, match="another tokenizer"):
        PretrainingDataset(tmp_path / "out", tokenizer=other)
    with pytest.raises(FileNotFoundError, match="not a prepared dataset"):
        PretrainingDataset(tmp_path)


def test_rerun_skips_whole_shards_and_redoes_half_written_ones(tmp_path, corpus):
    tokenizer = wordpiece(tmp_path / "tok")
    manifest = run([corpus], tokenizer, tmp_path / "out")
    shards = tmp_path / "out" / "shards"
    names = [s["name"] for s in manifest["shards"]]
    kept = (shards / f"{names[0]}.ids.npy").stat().st_mtime_ns
    # An interrupted run: a shard's arrays written, its stats file (written last) missing.
    (shards / f"{names[1]}.json").unlink()
    (shards / f"{names[1]}.ids.npy").write_bytes(b"half")
    again = run([corpus], tokenizer, tmp_path / "out")
    assert again["counts"] == manifest["counts"]
    assert (shards / f"{names[0]}.ids.npy").stat().st_mtime_ns == kept
    assert not [p for p in os.listdir(shards) if p.startswith(".")]  # no temporary left
    dataset = PretrainingDataset(tmp_path / "out")
    assert len(dataset) == manifest["counts"]["examples"]


@pytest.mark.parametrize("part", ["ids", "index"])
def test_a_damaged_shard_is_named_and_its_redo_is_the_one_it_says(tmp_path, corpus, part):
    tokenizer = wordpiece(tmp_path / "tok")
    run([corpus], tokenizer, tmp_path / "out")
    whole = PretrainingDataset(tmp_path / "out")
    # Copies: the dataset maps the files, and the one cut below is cut under it too.
    examples = [whole[i]["input_ids"].tolist() for i in range(len(whole))]
    name = whole.manifest["shards"][1]["name"]
    array = tmp_path / "out" / "shards" / f"{name}.{part}.npy"
    array.write_bytes(array.read_bytes()[:-40])  # cut short, as by a full disk or a bad copy
    with pytest.raises(ValueError, match=f"shard .*{name} is damaged") as error:
        PretrainingDataset(tmp_path / "out")
    assert f"delete {name}.json" in str(error.value)
    (tmp_path / "out" / "shards" / f"{name}.json").unlink()
    run([corpus], tokenizer, tmp_path / "out")
    redone = PretrainingDataset(tmp_path / "out")
    assert [redone[i]["input_ids"].tolist() for i in range(len(redone))] == examples


def test_shard_arrays_that_disagree_are_named(tmp_path, corpus):
    run([corpus], wordpiece(tmp_path / "tok"), tmp_path / "out")
    name = PretrainingDataset(tmp_path / "out").manifest["shards"][0]["name"]
    ids = tmp_path / "out" / "shards" / f"{name}.ids.npy"
    np.save(ids, np.load(ids)[:-1])  # a whole .npy file, one token short of its index
    with pytest.raises(ValueError, match=f"{name}: the index ends at token \\d+ but the shard"):
        PretrainingDataset(tmp_path / "out")


def test_batches(tmp_path, corpus):
    run([corpus], wordpiece(tmp_path / "tok"), tmp_path / "out")
    dataset = PretrainingDataset(tmp_path / "out")
    items = [dataset[i] for i in range(4)]
    padded = collate_padded(items, pad_token_id=0, pad_to=32)
    assert padded["input_ids"].shape == (4, 32)
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        assert torch.equal(padded["input_ids"][row, :n], item["input_ids"])
        assert padded["attention_mask"][row].sum() == n and padded["input_ids"][row, n:].eq(0).all()
        assert item["input_ids"][0] == 2 and item["input_ids"][-1] == 3  # [CLS] ... [SEP]
    packed = collate_packed(items)
    lengths = [len(i["input_ids"]) for i in items]
    assert packed["cu_seqlens"].tolist() == np.cumsum([0] + lengths).tolist()
    assert packed["max_seqlen"] == max(lengths)
    assert torch.equal(packed["input_ids"], torch.cat([i["input_ids"] for i in items]))
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_a_padded_batch_read_at_once_equals_the_collated_examples(tmp_path, corpus):
    run([corpus], wordpiece(tmp_path / "tok"), tmp_path / "out")
    dataset = PretrainingDataset(tmp_path / "out")
    assert len(dataset.manifest["shards"]) > 2  # batches across shards
    rng = random.Random(0)
    cases = [list(range(len(dataset))), [0], [-1, 5, -len(dataset)]]
    cases += [[rng.randrange(-len(dataset), len(dataset)) for _ in range(rng.randint(1, 40))]
              for _ in range(20)]  # fmt: skip
    for indices in cases:
        for pad_to in (None, 32, 40):
            want = collate_padded([dataset[i] for i in indices], pad_token_id=dataset.pad_token_id,
                                  pad_to=pad_to)  # fmt: skip
            got = dataset.padded_batch(indices, pad_to)
            assert got.keys() == want.keys()
            for key, tensor in want.items():
                assert got[key].dtype == tensor.dtype and torch.equal(got[key], tensor), key
    longest = max(len(dataset[i]["input_ids"]) for i in range(len(dataset)))
    with pytest.raises(ValueError, match=f"pad_to=8 is shorter than an example of {longest}"):
        dataset.padded_batch(range(len(dataset)), 8)
    with pytest.raises(IndexError, match=f"index {len(dataset)} out of range"):
        dataset.padded_batch([0, len(dataset)])
    with pytest.raises(ValueError, match="non-empty"):
        dataset.padded_batch([])


def test_sampler_shards_by_rank_and_resumes():
    ranks = [list(ResumableSampler(103, seed=5, rank=r, world_size=4)) for r in range(4)]
    assert all(len(r) == 25 for r in ranks)
    assert len(set().union(*map(set, ranks))) == 100  # disjoint, the tail of 3 dropped
    full = ResumableSampler(50, seed=1)
    first_epoch, second_epoch = list(full), list(full)
    assert sorted(first_epoch) == list(range(50)) and first_epoch != second_epoch
    resumed = ResumableSampler(50, seed=1)
    iterator = iter(resumed)
    used = [next(iterator) for _ in range(20)]
    state = resumed.state_dict(consumed=20)
    again = ResumableSampler(50, seed=1)
    again.load_state_dict(state)
    assert used + list(again) == first_epoch
    assert list(again) == second_epoch  # and the next epoch follows


def test_sampler_gives_each_rank_a_block_of_every_global_batch():
    single = list(ResumableSampler(64, seed=3, batch_size=8))
    ranks = [list(ResumableSampler(64, seed=3, rank=r, world_size=2, batch_size=4)) for r in (0, 1)]
    for step in range(8):  # global batch `step` of 8 = rank 0's 4 rows, then rank 1's 4
        want = single[8 * step : 8 * step + 8]
        assert ranks[0][4 * step : 4 * step + 4] + ranks[1][4 * step : 4 * step + 4] == want
