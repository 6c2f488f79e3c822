"""MediaWiki XML dumps (`*-pages-articles*.xml.bz2`) to ELECTRA's text format, streamed page by
page: markup stripped to plain text, one paragraph (or sentence) per line, a blank line between
articles; redirects and pages outside the article namespace skipped."""

from __future__ import annotations

import bz2
import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from electra_fast.data.sentences import split_sentences

# Link namespaces whose links are dropped with everything in them (English, Vietnamese,
# Japanese names; the dump's own namespace names are added from its header).
DROPPED_LINKS = {
    "file", "image", "category", "media",
    "tập tin", "hình", "thể loại",
    "ファイル", "画像", "カテゴリ",
}  # fmt: skip
# Tags whose whole content goes.
DROPPED_TAGS = (
    "ref", "math", "gallery", "timeline", "score", "syntaxhighlight", "source",
    "pre", "table", "imagemap", "chem", "graph", "mapframe", "templatedata",
)  # fmt: skip

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_DROPPED_TAG = re.compile(
    r"<(" + "|".join(DROPPED_TAGS) + r")\b[^>]*?(/>|>.*?</\1\s*>)", re.S | re.I
)
_ANY_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_EXTERNAL_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]+\s*([^\]]*)\]")
_BOLD_ITALIC = re.compile(r"'{2,}")
_HEADING = re.compile(r"^=+.*=+\s*$")
_MAGIC = re.compile(r"__[A-Z]+__")
_LIST_MARKERS = re.compile(r"^[*#:;]+\s*")


def _remove_nested(text: str, opening: str, closing: str) -> str:
    """Removes every balanced opening...closing span (templates, tables), nested ones too."""
    out, depth, i, start = [], 0, 0, 0
    while i < len(text):
        if text.startswith(opening, i):
            if depth == 0:
                out.append(text[start:i])
            depth += 1
            i += len(opening)
        elif depth and text.startswith(closing, i):
            depth -= 1
            i += len(closing)
            if depth == 0:
                start = i
        else:
            i += 1
    if depth == 0:
        out.append(text[start:])
    return "".join(out)


def _replace_links(text: str, dropped: set[str]) -> str:
    """[[target|label]] → label, [[target]] → target; links into dropped namespaces (files,
    categories) go with their captions, which may hold links themselves."""
    out, i = [], 0
    while True:
        start = text.find("[[", i)
        if start < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:start])
        depth, j = 0, start
        while j < len(text):
            if text.startswith("[[", j):
                depth, j = depth + 1, j + 2
            elif text.startswith("]]", j):
                depth, j = depth - 1, j + 2
                if depth == 0:
                    break
            else:
                j += 1
        inner = text[start + 2 : j - 2]
        namespace = inner.split(":", 1)[0].strip().lower() if ":" in inner else ""
        if namespace not in dropped:
            label = inner.rsplit("|", 1)[-1] if "|" in inner else inner
            out.append(_replace_links(label, dropped))
        i = j


def clean_wikitext(text: str, dropped_namespaces: set[str] = DROPPED_LINKS) -> list[str]:
    """Plain-text paragraphs of one article's wikitext."""
    text = _COMMENT.sub("", text)
    text = _DROPPED_TAG.sub("", text)
    text = _remove_nested(text, "{{", "}}")
    text = _remove_nested(text, "{|", "|}")
    text = _replace_links(text, dropped_namespaces)
    text = _EXTERNAL_LINK.sub(r"\1", text)
    text = _ANY_TAG.sub("", text)
    text = _MAGIC.sub("", text)
    text = html.unescape(_BOLD_ITALIC.sub("", text))
    paragraphs, current = [], []
    for line in text.split("\n"):
        if _HEADING.match(line.strip()) or not line.strip():
            if current:
                paragraphs.append(" ".join(current))
                current = []
            continue
        line = _LIST_MARKERS.sub("", line.strip())
        if line:
            current.append(line)
    if current:
        paragraphs.append(" ".join(current))
    return [" ".join(p.split()) for p in paragraphs if p.strip()]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


# The dump header's namespaces whose links are dropped: media (-2), files (6), categories (14).
_DROPPED_KEYS = {"-2", "6", "14"}


def iterate_articles(
    dump: str | Path, dropped: set[str] | None = None
) -> Iterator[tuple[str, str]]:
    """(title, wikitext) of each article (namespace 0, not a redirect), streamed. The names the
    dump's header gives its file and category namespaces are added to `dropped`."""
    opener = bz2.open if str(dump).endswith(".bz2") else open
    with opener(dump, "rb") as stream:
        yield from _articles(_elements(stream, dump), dropped)


def _elements(stream, dump) -> Iterator:
    """The dump's elements as they end; a stream that is not XML, or is cut short or damaged
    (as a bz2 file or as XML), is an error that names the dump."""
    try:
        for _, element in ET.iterparse(stream, events=("end",)):
            yield element
    except (ET.ParseError, EOFError, OSError) as error:
        raise ValueError(f"{dump} is not a whole MediaWiki XML dump: {error}") from error


def _articles(elements: Iterator, dropped: set[str] | None) -> Iterator[tuple[str, str]]:
    """The pages' (title, wikitext) that iterate_articles keeps, from the dump's elements."""
    title = namespace = text = None
    redirect = False
    for element in elements:
        tag = _local(element.tag)
        if tag == "namespace" and dropped is not None:
            if element.get("key") in _DROPPED_KEYS and element.text:
                dropped.add(element.text.strip().lower())
        elif tag == "title":
            title = element.text or ""
        elif tag == "ns":
            namespace = (element.text or "").strip()
        elif tag == "redirect":
            redirect = True
        elif tag == "text":
            text = element.text or ""
        elif tag == "page":
            if namespace == "0" and not redirect and text is not None:
                yield title, text
            title = namespace = text = None
            redirect = False
            element.clear()  # keep memory flat over a whole dump


def extract_wiki(dump: str | Path, out: str | Path, *, language: str | None = None) -> dict:
    """Writes the articles' text to `out`: a paragraph per line (a sentence per line when
    `language` is given), a blank line between articles. Returns counts."""
    out = Path(out)
    temporary = out.with_name(f".{out.name}.tmp")
    articles = paragraphs = 0
    dropped = set(DROPPED_LINKS)
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            for _, wikitext in iterate_articles(dump, dropped):
                lines = clean_wikitext(wikitext, dropped)
                if language is not None:
                    lines = [s for p in lines for s in split_sentences(p, language)]
                if not lines:
                    continue
                f.write("\n".join(lines) + "\n\n")
                articles += 1
                paragraphs += len(lines)
        temporary.replace(out)
    finally:  # a failed extraction leaves `out` as it was and nothing beside it
        temporary.unlink(missing_ok=True)
    return {"articles": articles, "lines": paragraphs}
