"""Wikipedia dump extraction: markup cases written out by hand, and a small bz2 dump."""

import bz2

import pytest

from electra_fast.cli import main
from electra_fast.data.wiki import clean_wikitext, extract_wiki

MARKUP_CASES = [
    (
        "'''Hà Nội''' là [[thủ đô]] của [[Việt Nam|nước Việt Nam]].",
        ["Hà Nội là thủ đô của nước Việt Nam."],
    ),
    ("Text{{Infobox|name={{nested|x}}|y=1}} goes on.", ["Text goes on."]),
    ('A<ref name="a">cite {{web}}</ref> b<ref name=x/> c.', ["A b c."]),
    ("[[File:Map.png|thumb|A [[map]] of it]]Real text.", ["Real text."]),
    ("[[Tập tin:Bản đồ.png|nhỏ|chú thích]]Văn bản.", ["Văn bản."]),
    ("[[Category:Cities]]\n[[Thể loại:Thành phố]]", []),
    ('Before\n{| class="wikitable"\n|-\n| a || b\n|}\nAfter', ["Before", "After"]),
    (
        "== History ==\nFirst para line\ncontinues.\n\nSecond para.",
        ["First para line continues.", "Second para."],
    ),
    ("See [https://example.org the site] and [https://bare.org].", ["See the site and ."]),
    ("x<!-- hidden -->y &amp; z&nbsp;w", ["xy & z w"]),
    ("* item one\n* item two", ["item one item two"]),
    ("<math>E=mc^2</math>Energy <b>bold</b>.", ["Energy bold."]),
    (
        "__TOC__\n東京は[[日本]]の首都である。[[ファイル:東京.jpg|thumb]]",
        ["東京は日本の首都である。"],
    ),
]


@pytest.mark.parametrize(("wikitext", "want"), MARKUP_CASES)
def test_markup(wikitext, want):
    assert clean_wikitext(wikitext) == want


def page(title, ns, text, redirect=False):
    extra = f'<redirect title="{text}" />' if redirect else ""
    return (
        f"<page><title>{title}</title><ns>{ns}</ns><id>1</id>{extra}"
        f'<revision><id>2</id><text xml:space="preserve">{text}</text></revision></page>'
    )


def test_dump(tmp_path):
    xml = (
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">'
        '<siteinfo><namespaces><namespace key="6">Fichier</namespace>'
        '<namespace key="14">Catégorie</namespace></namespaces></siteinfo>'
        + page("Paris", 0, "'''Paris''' est une ville. Elle est grande.\n\n[[Fichier:P.jpg|x]]Fin.")
        + page("Talk:Paris", 1, "discussion")
        + page("Lutèce", 0, "Paris", redirect=True)
        + page("Vide", 0, "{{stub}}")
        + page("Lyon", 0, "Lyon &amp;lt;b&amp;gt; ville.[[Catégorie:Villes]]")
        + "</mediawiki>"
    )
    dump = tmp_path / "frwiki-pages-articles.xml.bz2"
    dump.write_bytes(bz2.compress(xml.encode()))
    counts = extract_wiki(dump, tmp_path / "out.txt")
    assert (tmp_path / "out.txt").read_text() == (
        "Paris est une ville. Elle est grande.\nFin.\n\nLyon <b> ville.\n\n"
    )
    assert counts == {"articles": 2, "lines": 3}
    extract_wiki(dump, tmp_path / "split.txt", language="en")
    assert (
        (tmp_path / "split.txt")
        .read_text()
        .startswith("Paris est une ville.\nElle est grande.\nFin.\n\n")
    )
    assert main(["extract-wiki", str(dump), str(tmp_path / "cli.txt")]) == 0
    assert (tmp_path / "cli.txt").read_text() == (tmp_path / "out.txt").read_text()


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("not.xml", b"hello", "syntax error"),
        ("cut.xml", b"<mediawiki><page><title>x</title>", "no element found"),
        ("damaged.xml.bz2", b"BZh9" + bytes(range(200)), "Invalid data stream"),
        (
            "cut.xml.bz2",
            bz2.compress(b"<mediawiki>" + b"<page/>" * 500 + b"</mediawiki>")[:40],
            "end-of-stream marker",
        ),
    ],  # fmt: skip
)
def test_a_bad_dump_is_named_and_the_previous_output_kept(tmp_path, name, content, words):
    (tmp_path / name).write_bytes(content)
    (tmp_path / "out.txt").write_text("an earlier extraction\n")
    with pytest.raises(ValueError, match=f"{name} is not a whole MediaWiki XML dump: .*{words}"):
        extract_wiki(tmp_path / name, tmp_path / "out.txt")
    assert (tmp_path / "out.txt").read_text() == "an earlier extraction\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "out.txt"])
