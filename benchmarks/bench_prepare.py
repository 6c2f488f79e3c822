"""`prepare` throughput (MB/s of input text) on the bundled samples repeated to about 50 MB,
with 1 and 2 processes, a 3,000-piece SentencePiece vocabulary (what the 1 MB sample supports),
on plain text and with Vietnamese word segmentation first (skipped without coccoc's
dictionaries)."""

from pathlib import Path

import pytest

from benchmarks.conftest import describe, smoke_size
from electra_fast.data import prepare

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
TARGET_MB = 50


@pytest.fixture(scope="module", params=["spm", "vi words + spm"])
def tokenizer(tmp_path_factory, request):
    pytest.importorskip("sentencepiece")
    from electra_fast.tokenization import vietnamese
    from electra_fast.tokenization.sentencepiece import train_sentencepiece

    segmented = request.param != "spm"
    if segmented and not vietnamese.dicts_present():
        pytest.skip(f"coccoc's dictionaries are not downloaded (`{vietnamese.DOWNLOAD_COMMAND}`)")
    out = tmp_path_factory.mktemp("tok")
    lines = [line for line in (SAMPLES / "vi.txt").read_text(encoding="utf-8").splitlines() if line]
    train_sentencepiece(lines, out, vocab_size=3000,
                        pre_segmenter={"type": "vietnamese"} if segmented else None)  # fmt: skip
    return request.param, out


@pytest.mark.parametrize("processes", [1, 2])
def test_prepare(benchmark, tmp_path, tokenizer, processes):
    pipeline, tokenizer = tokenizer
    import torch

    repeats = smoke_size(benchmark, TARGET_MB, 1)
    corpus = tmp_path / "corpus.txt"
    text = (SAMPLES / "vi.txt").read_text(encoding="utf-8")
    corpus.write_text(text * repeats, encoding="utf-8")
    megabytes = corpus.stat().st_size / 2**20
    runs = iter(range(1000))

    def run():
        return prepare(
            [str(corpus)],
            str(tokenizer),
            str(tmp_path / f"out{next(runs)}"),
            num_processes=processes,
            progress=False,
        )

    describe(
        benchmark,
        op="prepare",
        provider="electra_fast",
        mode=f"{pipeline}, {processes} processes",
        size=f"{megabytes:.0f} MB vi",
        device=torch.device("cpu"),
    )
    benchmark.extra_info["mb_per_s_note"] = "MB/s = size / p50"
    manifest = benchmark.pedantic(run, rounds=3 if not benchmark.disabled else 1, iterations=1)
    assert manifest["counts"]["examples"] > 0
