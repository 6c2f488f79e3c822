"""Sentence splitting cases, written out by hand."""

import pytest

from electra_fast.data.sentences import split_sentences

CASES = [
    (
        "ja",
        "今日は晴れです。明日は雨でしょう！本当？",
        ["今日は晴れです。", "明日は雨でしょう！", "本当？"],
    ),
    (
        "ja",
        "彼は「行きます。」と言った。そして去った。",
        ["彼は「行きます。」", "と言った。", "そして去った。"],
    ),
    ("ja", "句点のない文", ["句点のない文"]),
    (
        "vi",
        "Giá là 3.5 triệu đồng. Năm 2020 dân số là 1.000.000 người!",
        ["Giá là 3.5 triệu đồng.", "Năm 2020 dân số là 1.000.000 người!"],
    ),
    (
        "vi",
        "TP. Hồ Chí Minh là thành phố lớn. Ấn Độ ở châu Á.",
        ["TP. Hồ Chí Minh là thành phố lớn.", "Ấn Độ ở châu Á."],
    ),
    ("vi", 'Anh ấy nói: "Xin chào." Sau đó đi về.', ['Anh ấy nói: "Xin chào."', "Sau đó đi về."]),
    (
        "en",
        "Dr. Smith paid $3.50. He left... Then what?",
        ["Dr. Smith paid $3.50.", "He left...", "Then what?"],
    ),
    (
        "en",
        "It ends with e.g. this one. Lowercase after. stays together",
        ["It ends with e.g. this one.", "Lowercase after. stays together"],
    ),
    ("en", "J. R. R. Tolkien wrote it.", ["J. R. R. Tolkien wrote it."]),
    ("en", "   ", []),
]


@pytest.mark.parametrize(("language", "text", "want"), CASES)
def test_split(language, text, want):
    assert split_sentences(text, language) == want


def test_unknown_language():
    with pytest.raises(ValueError, match="language"):
        split_sentences("x", "fr")
