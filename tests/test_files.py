"""electra_fast._files: a log a killed writer left with an unfinished line is cut back to its
last whole line before anything is appended; a failed file write or directory fill keeps the old
one; a file's SHA-256 read in blocks is hashlib's of its bytes."""

import hashlib
import io

import pytest

from electra_fast._files import (
    _after_last_newline,
    atomic_path,
    file_sha256,
    open_log,
    replace_directory,
    write_atomically,
)

WHOLE = b'{"step": 1}\n{"step": 2}\n'


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (b"", b""),
        (WHOLE, WHOLE),
        (WHOLE + b'{"step": 3, "lo', WHOLE),
        (b'{"step": 1, "lo', b""),
        (WHOLE + b"x" * 200_000, WHOLE),  # an unfinished line longer than a read chunk
    ],
)
def test_open_log_cuts_an_unfinished_last_line(tmp_path, before, after):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(before)
    with open_log(path) as log:
        log.write('{"step": 9}\n')
    assert path.read_bytes() == after + b'{"step": 9}\n'


def test_open_log_creates_a_missing_log(tmp_path):
    with open_log(tmp_path / "new.jsonl") as log:
        log.write("{}\n")
    assert (tmp_path / "new.jsonl").read_text() == "{}\n"


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64])
@pytest.mark.parametrize("data", [b"", b"abc", b"\n", b"a\nb", b"ab\ncd\nef", b"\n\nxyz"])
def test_after_last_newline_reading_backwards_equals_rfind(data, chunk):
    assert _after_last_newline(io.BytesIO(data), len(data), chunk) == data.rfind(b"\n") + 1


def test_a_failed_fill_keeps_the_directory(tmp_path):
    target = tmp_path / "export"
    replace_directory(target, lambda d: (d / "a.txt").write_text("old"))

    def fail(staging):
        (staging / "a.txt").write_text("new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_directory(target, fail)
    assert [p.name for p in target.iterdir()] == ["a.txt"]
    assert (target / "a.txt").read_text() == "old"
    replace_directory(target, lambda d: (d / "b.txt").write_text("new"))
    assert [p.name for p in target.iterdir()] == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_atomic_path_replaces_the_file_only_when_the_block_ends(tmp_path):
    path = tmp_path / "state.bin"
    with atomic_path(path) as temporary:
        temporary.write_bytes(b"first")
        assert not path.exists()  # nothing at `path` until the block is done
    assert path.read_bytes() == b"first"
    with atomic_path(path) as temporary:
        temporary.write_bytes(b"second")
        assert path.read_bytes() == b"first"
    assert path.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_a_failed_write_keeps_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "config.json"
    write_atomically(path, '{"old": true}\n')
    with pytest.raises(OSError, match="disk full"), atomic_path(path) as temporary:
        temporary.write_text('{"new": ')
        raise OSError("disk full")
    assert path.read_text() == '{"old": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_a_block_that_writes_nothing_is_an_error_and_keeps_the_file(tmp_path):
    path = tmp_path / "config.json"
    write_atomically(path, "old")
    with pytest.raises(FileNotFoundError), atomic_path(path):
        pass
    assert path.read_text() == "old"


def test_file_sha256_reads_in_blocks_as_one_read_would(tmp_path):
    data = bytes(range(256)) * 9000  # more than two of its megabyte blocks
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert file_sha256(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
