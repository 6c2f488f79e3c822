"""Vietnamese segmentation throughput (MB/s = size / p50) on the bundled Vietnamese text
repeated 4 times (about 4 MB), with coccoc's real dictionaries (skipped when they are not
downloaded): the batch call on 1 and 2 threads, the batch of joined words (one str per text,
what `prepare` asks for), one call per line from Python, and the C++ core alone on 1 and 2
threads (segmentation of the same batch, no Python object per token: the figure to compare
with coccoc's C++). Where electra_fast was built against an installed coccoc,
`coccoc` rows time coccoc's own C++ on the same batch (one thread: it cannot run more), both
the call that gives our output and its faster plain `segment`."""

from pathlib import Path

import pytest
import torch

from benchmarks.conftest import describe, smoke_size
from electra_fast.tokenization import coccoc_backend, vietnamese

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "samples" / "vi.txt"


@pytest.fixture(scope="module")
def segmenter():
    if not vietnamese.dicts_present():
        pytest.skip(f"coccoc's dictionaries are not downloaded (`{vietnamese.DOWNLOAD_COMMAND}`)")
    return vietnamese.Segmenter()


CALLS = ["batch 1 thread", "batch 2 threads", "words batch 1 thread", "per line", "core 1 thread",
         "core 2 threads"]  # fmt: skip


@pytest.mark.parametrize("call", ["segment_general", "segment"])
def test_segment_vietnamese_coccoc(benchmark, segmenter, call):
    """coccoc's C++ on one thread (the input encoded beforehand): `segment_general` gives what
    its word_tokenize returns (the output our core rows produce); `segment` is its plain C++
    call, which keeps no punctuation and so does less."""
    if not coccoc_backend.available():
        pytest.skip("electra_fast was built without coccoc (COCCOC_ROOT)")
    original = vietnamese.Segmenter(backend="coccoc")
    lines = SAMPLE.read_text(encoding="utf-8").splitlines() * smoke_size(benchmark, 4, 1)
    megabytes = sum(len(line.encode()) + 1 for line in lines) / 1e6
    describe(benchmark, op="segment_vi", provider="coccoc", mode=f"{call} 1 thread",
             size=f"{megabytes:.1f} MB", device=torch.device("cpu"))  # fmt: skip
    benchmark.extra_info["mb_per_s_note"] = "MB/s = size / p50"
    encoded = [line.encode("utf-8") for line in lines]
    count = original._impl._coccoc.count
    run = lambda: count(encoded, 0, call == "segment")  # noqa: E731
    tokens = benchmark.pedantic(run, rounds=5 if not benchmark.disabled else 1, iterations=1)
    ours = segmenter._impl._count_batch(lines, 0, 1)
    if call == "segment_general":
        assert tokens == ours
    else:  # the same words without the punctuation
        assert 0.5 * ours < tokens < ours


@pytest.mark.parametrize("call", CALLS)
def test_segment_vietnamese(benchmark, segmenter, call):
    lines = SAMPLE.read_text(encoding="utf-8").splitlines() * smoke_size(benchmark, 4, 1)
    megabytes = sum(len(line.encode()) + 1 for line in lines) / 1e6
    threads = 1 if call.endswith("1 thread") else 2
    if call == "per line":
        run = lambda: [segmenter.tokens(line) for line in lines]  # noqa: E731
    elif call.startswith("core"):
        run = lambda: segmenter._impl._count_batch(lines, 0, threads)  # noqa: E731
    elif call.startswith("words"):
        run = lambda: segmenter.segment_words_batch(lines, num_threads=threads)  # noqa: E731
    else:
        run = lambda: segmenter.tokens_batch(lines, num_threads=threads)  # noqa: E731
    describe(benchmark, op="segment_vi", provider="electra_fast", mode=call,
             size=f"{megabytes:.1f} MB", device=torch.device("cpu"))  # fmt: skip
    benchmark.extra_info["mb_per_s_note"] = "MB/s = size / p50"
    tokens = benchmark.pedantic(run, rounds=5 if not benchmark.disabled else 1, iterations=1)
    if call.startswith("core"):  # the token count of the text, as the batch call gives it
        assert tokens == sum(len(t) for t in segmenter.tokens_batch(lines))
    else:
        assert len(tokens) == len(lines)
