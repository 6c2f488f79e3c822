"""`Segmenter(backend="coccoc")`: the installed coccoc-tokenizer itself behind our segmenter's
interface, through electra_fast._coccoc (built only where setup.py found coccoc's headers).

It is for checking our segmenter against the original, or for using the original: it is
coccoc's own code, so it keeps coccoc's limits. Calls hold one process-wide lock (coccoc is a
singleton whose lookups write a shared cache), batches run on one thread, and `segment` gives
the spans of coccoc's tokens only: the '_' and URL dots that coccoc drops are not covered.
"""

from __future__ import annotations

import os
from collections.abc import Iterable


def available() -> bool:
    try:
        from electra_fast import _coccoc  # noqa: F401
    except ImportError:
        return False
    return True


class CoccocImpl:
    """The methods of electra_fast._vi.Segmenter, answered by coccoc."""

    def __init__(self, dicts: str | os.PathLike | None, load_nontone_data: bool):
        try:
            from electra_fast import _coccoc
        except ImportError as error:
            raise ImportError(
                "backend='coccoc': electra_fast was built without coccoc. Install coccoc-tokenizer "
                "(cmake .. && make install) and reinstall electra_fast with COCCOC_ROOT set to "
                "its install prefix (default /usr/local)"
            ) from error
        self._coccoc = _coccoc
        self.dicts = str(dicts) if dicts is not None else _coccoc.default_dicts
        _coccoc.initialize(self.dicts, load_nontone_data)

    def _run(self, texts: Iterable[str], mode: int) -> list[list[tuple]]:
        return self._coccoc.segment(_encoded(texts), mode)

    @staticmethod
    def _texts(row) -> list[str]:
        return [text.decode("utf-8", "surrogatepass") for text, _, _, _ in row]

    @staticmethod
    def _spans(text: str, row, keep_punct: bool) -> list[tuple[int, int]]:
        char_at, position = {}, 0
        for index, character in enumerate(text):
            char_at[position] = index
            position += len(character.encode("utf-8", "surrogatepass"))
        char_at[position] = len(text)
        return [(char_at[s], char_at[e]) for _, s, e, punct in row if keep_punct or not punct]

    def _tokens(self, text, mode: int) -> list[str]:
        return self._tokens_batch(_one(text), mode, 1)[0]

    def _segment(self, text, mode: int, keep_punct: bool) -> list[tuple[int, int]]:
        return self._segment_batch(_one(text), mode, keep_punct, 1)[0]

    def _tokens_batch(self, texts, mode: int, num_threads: int) -> list[list[str]]:
        return [self._texts(row) for row in self._run(_many(texts), mode)]

    def _words_batch(self, texts, mode: int, num_threads: int) -> list[str]:
        return [" ".join(tokens) for tokens in self._tokens_batch(texts, mode, num_threads)]

    def _segment_batch(self, texts, mode: int, keep_punct: bool, num_threads: int):
        texts = list(_many(texts))
        rows = self._run(texts, mode)
        return [self._spans(t, row, keep_punct) for t, row in zip(texts, rows, strict=True)]

    def _count_batch(self, texts, mode: int, num_threads: int) -> int:
        return self._coccoc.count(_encoded(_many(texts)), mode)


def _one(text) -> list[str]:
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    return [text]


def _encoded(texts: Iterable[str]) -> list[bytes]:
    """UTF-8 for coccoc; lone surrogates pass through, as our backend lets them."""
    encoded = []
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"texts[i] must be str, got {type(text).__name__}")
        encoded.append(text.encode("utf-8", "surrogatepass"))
    return encoded


def _many(texts) -> Iterable[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of str, got a single str")
    return texts
