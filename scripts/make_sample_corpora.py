"""Cuts the sample corpora under data/samples/ from LibreOffice's help pages.

    apt-get download libreoffice-help-vi libreoffice-help-ja libreoffice-help-en-us
    for f in libreoffice-help-*.deb; do dpkg-deb -x "$f" extracted; done
    python scripts/make_sample_corpora.py extracted data/samples

Each help page becomes a document (a sentence per line, a blank line after it); only the
page's content area is read, hidden (platform-specific) spans are skipped, and in the
Vietnamese and Japanese pages only paragraphs actually written in that language are kept
(the translations are partial). Each corpus stops before 1 MB.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

from electra_fast.data.sentences import split_sentences

LANGUAGES = {"vi": "vi", "ja": "ja", "en-US": "en"}
LIMIT = 1_000_000
IN_LANGUAGE = {
    "vi": re.compile(r"[ăâđêôơưạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹ]", re.I),
    "ja": re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]"),
    "en": re.compile(r"."),
}


class HelpPage(HTMLParser):
    """Paragraph and heading texts inside the page's DisplayArea."""

    BLOCKS = {"p", "h1", "h2", "h3", "h4", "li", "td"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paragraphs, self._text, self._depth, self._hidden = [], [], 0, 0
        self._inside = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id") == "DisplayArea":
            self._inside = True
        if self._hidden or "hidden" in attrs:
            self._hidden += 1
        if tag in self.BLOCKS:
            self._flush()

    def handle_endtag(self, tag):
        if self._hidden:
            self._hidden -= 1
        if tag in self.BLOCKS:
            self._flush()

    def handle_data(self, data):
        if self._inside and not self._hidden:
            self._text.append(data)

    def _flush(self):
        text = " ".join("".join(self._text).split())
        if text:
            self.paragraphs.append(text)
        self._text = []


def page_sentences(path: Path, language: str) -> list[str]:
    parser = HelpPage()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    kept = [
        p
        for p in parser.paragraphs
        if IN_LANGUAGE[language].search(p) and not p.startswith("Title is:")  # page metadata
    ]
    return [s for p in kept for s in split_sentences(p, language)]


def main(extracted: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for directory, language in LANGUAGES.items():
        pages = sorted((extracted / "usr/share/libreoffice/help" / directory).rglob("*.html"))
        text, documents = "", 0
        for page in pages:
            sentences = page_sentences(page, language)
            if len(sentences) < 2:
                continue
            document = "\n".join(sentences) + "\n\n"
            if len((text + document).encode()) > LIMIT:
                break
            text += document
            documents += 1
        (out / f"{language}.txt").write_text(text, encoding="utf-8")
        print(f"{language}: {documents} documents, {len(text.encode())} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
