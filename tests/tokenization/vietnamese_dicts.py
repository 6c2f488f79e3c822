"""A small set of coccoc-format dictionaries, written by the tests, on which every rule of the
segmenter has a case whose answer can be worked out by hand."""

from __future__ import annotations

from pathlib import Path

LETTERS = (
    "abcdefghijklmnopqrstuvwxyzđáàảãạâấầẩẫậăắằẳẵặéèẻẽẹêếềểễệíìỉĩịóòỏõọôốồổỗộơớờởỡợúùủũụưứừửữựýỳỷỹỵ"
)
# coccoc never reads the last row of `alphabetic` (see CharTable::read_classes): 'ş' is here
# only to show that it stays a non-letter.
UNREAD_LAST_LETTER = "ş"

WORDS = {
    "việt nam": 5000,
    "hà nội": 3000,
    "thể thao": 800,
    "dứt khoát": 900,
    "dứt": 1000,
    "lý do": 700,
}
# coccoc reads a number as one only when it starts with a digit its dictionary has a word for
# (the real one has every digit).
WORDS.update({d: 100 for d in "0123456789"})
ACRONYMS = {"vn": 100000, "express": 5000, "net": 1000, "com": 1000}
SYLLABLES = ["vn", "express", "viet", "nam"]  # Freq2NontoneUniFile: indices 0..3
PAIRS = {(2, 3): 1000}  # "viet" then "nam"


def varints(values: list[int]) -> bytes:
    """coccoc's encoding: 7 bits a byte, low first; the first byte of a number has the high bit
    clear and the rest have it set."""
    out = bytearray()
    for v in values:
        out.append(v & 0x7F)
        v >>= 7
        while v:
            out.append(0x80 | (v & 0x7F))
            v >>= 7
    return bytes(out)


def write_dicts(directory: Path, words: dict[str, int] | None = None) -> Path:
    """Writes every source file; `words` replaces WORDS as the multi-term dictionary."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = [f"{c.upper()} {ord(c.upper())} {c} {ord(c)}" for c in LETTERS]
    rows.append(f"{UNREAD_LAST_LETTER.upper()} {ord(UNREAD_LAST_LETTER.upper())} "
                f"{UNREAD_LAST_LETTER} {ord(UNREAD_LAST_LETTER)}")  # fmt: skip
    (directory / "alphabetic").write_text(
        f"{len(rows)}\n" + "\n".join(rows) + "\n", encoding="utf-8"
    )
    digits = [f"{d} {ord(d)} {d} {ord(d)}" for d in "0123456789"]
    (directory / "numeric").write_text("10\n" + "\n".join(digits) + "\n")
    (directory / "vndic_multiterm").write_text(
        "".join(f"{w} {f}\n" for w, f in (WORDS if words is None else words).items()),
        encoding="utf-8",
    )
    (directory / "acronyms").write_text("".join(f"{w} {f}|gloss\n" for w, f in ACRONYMS.items()))
    (directory / "chemical_comp").write_text("h2o\nnacl\n")
    (directory / "special_token.strong").write_text("tp.hcm\n")
    (directory / "d_and_gi.txt").write_text("dứt\tgiứt\n", encoding="utf-8")
    (directory / "i_and_y.txt").write_text("lý\tlí\n", encoding="utf-8")
    (directory / "Freq2NontoneUniFile").write_text("\n".join(SYLLABLES) + "\n")
    values = [len(SYLLABLES)]
    for first in range(len(SYLLABLES)):
        row = sorted((second, freq) for (a, second), freq in PAIRS.items() if a == first)
        values.append(len(row))
        previous = 0
        for second, freq in row:
            values += [second - previous, freq]
            previous = second
    (directory / "nontone_pair_freq").write_bytes(varints(values))
    return directory
