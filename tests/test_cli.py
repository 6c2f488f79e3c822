"""electra-fast train-tokenizer and prepare, end to end, their error exit, and the help."""

import argparse

import pytest

from electra_fast import tokenization
from electra_fast.cli import main, parser
from electra_fast.data import PretrainingDataset
from tests.data.corpus_cases import corpus_text, documents

pytest.importorskip("sentencepiece")


def test_train_tokenizer_then_prepare(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text(corpus_text(documents(300)))
    assert (
        main(
            [
                "train-tokenizer",
                "--input",
                str(tmp_path / "corpus.txt"),
                "--vocab-size",
                "120",
                "--out",
                str(tmp_path / "tok"),
            ]
        )
        == 0
    )
    assert tokenization.load(tmp_path / "tok").vocab_size == 120
    assert (
        main(
            [
                "prepare",
                "--input",
                str(tmp_path / "corpus.txt"),
                "--tokenizer",
                str(tmp_path / "tok"),
                "--max-seq-length",
                "64",
                "--out",
                str(tmp_path / "data"),
            ]
        )
        == 0
    )
    assert "examples" in capsys.readouterr().err  # the summary line
    dataset = PretrainingDataset(tmp_path / "data", tokenizer=tmp_path / "tok")
    assert len(dataset) > 0 and max(len(dataset[i]["input_ids"]) for i in range(len(dataset))) <= 64


def test_errors_exit_with_a_message(tmp_path, capsys):
    code = main(
        [
            "prepare",
            "--input",
            str(tmp_path / "nothing"),
            "--tokenizer",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_an_out_path_that_is_a_file_exits_with_a_message(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text(corpus_text(documents(20)))
    (tmp_path / "taken").write_text("a file, not a directory")
    main(["train-tokenizer", "--input", str(tmp_path / "corpus.txt"), "--vocab-size", "60",
          "--out", str(tmp_path / "tok")])  # fmt: skip
    capsys.readouterr()
    code = main(["prepare", "--input", str(tmp_path / "corpus.txt"), "--tokenizer",
                 str(tmp_path / "tok"), "--out", str(tmp_path / "taken")])  # fmt: skip
    error = capsys.readouterr().err
    assert code == 2 and "electra-fast prepare: error:" in error and "taken" in error
    assert "Traceback" not in error
    assert (tmp_path / "taken").read_text() == "a file, not a directory"


def test_the_help_names_every_command():
    root = parser()
    (commands,) = [a for a in root._actions if isinstance(a, argparse._SubParsersAction)]
    words = set(root.description.replace(",", " ").replace(".", " ").split())
    assert set(commands.choices) <= words, set(commands.choices) - words
