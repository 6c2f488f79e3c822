"""CRC-32C against the published check values and a bit-at-a-time reference, across the
chunk and batch boundaries of the vectorised computation."""

import numpy as np
import pytest

from electra_fast.model import crc32c as module
from electra_fast.model.crc32c import crc32c, unmask


def bitwise(data: bytes) -> int:
    """The CRC-32C by its definition: reflected polynomial 0x82F63B78, one bit at a time."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize(
    ("data", "want"),
    [
        (b"123456789", 0xE3069283),  # the catalogue's check value
        (bytes(32), 0x8A9136AA),  # RFC 3720, B.4
        (b"\xff" * 32, 0x62A8AB43),
        (bytes(range(32)), 0x46DD794E),
        (bytes(range(31, -1, -1)), 0x113FDB5C),
        (b"", 0),
    ],
)
def test_published_values(data, want):
    assert crc32c(data) == want


CHUNK = module._CHUNK_BYTES


@pytest.mark.parametrize(
    "length", [1, 3, 4, 7, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 5 * CHUNK + 3, 9 * CHUNK + 6]
)
def test_equals_the_bitwise_definition(length, monkeypatch):
    monkeypatch.setattr(module, "_ROWS_PER_BATCH", 2)  # several batches of chunks
    data = np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8)
    want = bitwise(data.tobytes())
    assert crc32c(data) == want
    assert crc32c(data.tobytes()) == want
    # A slice of a larger array (as a memory map's tensor is) and an odd start.
    padded = np.concatenate([np.zeros(3, np.uint8), data])
    assert crc32c(padded[3:]) == want


def test_unmask_undoes_tensorflows_mask():
    def mask(crc):  # crc32c.h in TensorFlow: rotate right by 15 bits, add a constant
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    for crc in (0, 1, 0xE3069283, 0xFFFFFFFF, 0x80000000):
        assert unmask(mask(crc)) == crc


def test_bad_data_is_an_error_naming_the_argument():
    with pytest.raises(TypeError, match="crc32c: data must be bytes or a 1-D uint8 array"):
        crc32c(np.zeros(4, np.float32))
