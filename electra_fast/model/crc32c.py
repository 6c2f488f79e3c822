"""CRC-32C (Castagnoli), the checksum TensorFlow stores for every tensor of a checkpoint, in
numpy and fast enough for whole checkpoints (a few hundred MB/s where a byte loop in Python
manages about one).

The data is cut into chunks whose CRCs are computed side by side, a 32-bit word of every chunk
per numpy step (slicing by 4). A CRC is linear over GF(2): the CRC of A || B is the CRC of A
pushed through len(B) zero bytes, xor the CRC of B started from 0. Pushing through n zero
bytes is a 32 x 32 bit matrix, so the chunk CRCs are combined pairwise in a tree, each level's
matrix the square of the one before.
"""

from __future__ import annotations

import functools

import numpy as np

_POLYNOMIAL = 0x82F63B78  # 0x1EDC6F41 bit-reversed: the CRC works on reflected bits
_CHUNK_BYTES = 4096  # a power of two
_ROWS_PER_BATCH = 8192  # chunks per batch: 32 MB, transposed so that each step reads along rows


def _tables() -> np.ndarray:
    """T[k][b]: the CRC state after byte b followed by k zero bytes, from state 0."""
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(_POLYNOMIAL), table >> 1)
    tables = [table.astype(np.uint32)]
    for _ in range(3):
        last = tables[-1]
        tables.append(table[last & 0xFF] ^ (last >> 8))
    return np.stack(tables)


_T = _tables()
# A CRC state x with a little-endian word xor-ed in, through the word's 4 bytes: byte k of x
# is followed by 3 - k more bytes.
_WORD_STEP = np.ascontiguousarray(_T[::-1])


def _apply(byte_tables: np.ndarray, x: np.ndarray) -> np.ndarray:
    """M x for each 32-bit value of x, M a linear map given by its byte tables (_byte_tables)."""
    return (
        byte_tables[0][x & 0xFF]
        ^ byte_tables[1][(x >> 8) & 0xFF]
        ^ byte_tables[2][(x >> 16) & 0xFF]
        ^ byte_tables[3][x >> 24]
    )


def _byte_tables(columns: np.ndarray) -> np.ndarray:
    """The byte tables of M, given by its columns (the images of bits 0 .. 31): for each byte k
    of x, the 256 values of M applied to that byte alone."""
    bits = (np.arange(256, dtype=np.uint32)[:, None] >> np.arange(8, dtype=np.uint32)) & 1
    out = np.zeros((4, 256), dtype=np.uint32)
    for k in range(4):
        chosen = np.where(bits.astype(bool), columns[8 * k : 8 * k + 8][None, :], np.uint32(0))
        out[k] = np.bitwise_xor.reduce(chosen, axis=1)
    return out


@functools.cache
def _chunk_matrix() -> np.ndarray:
    """The columns of the map taking a CRC state through one chunk of zero bytes."""
    state = np.uint32(1) << np.arange(32, dtype=np.uint32)
    matrix = _T[0][state & 0xFF] ^ (state >> 8)  # one zero byte
    for _ in range(_CHUNK_BYTES.bit_length() - 1):
        matrix = _apply(_byte_tables(matrix), matrix)  # twice as many
    return matrix


def _chunk_crcs(words: np.ndarray) -> np.ndarray:
    """The CRC state after each row of `words` (little-endian uint32, one chunk per row), each
    from state 0 except the first row, which starts from the CRC's initial 0xFFFFFFFF."""
    states = np.empty(words.shape[0], dtype=np.uint32)
    for start in range(0, words.shape[0], _ROWS_PER_BATCH):
        batch = np.ascontiguousarray(words[start : start + _ROWS_PER_BATCH].T)
        x = np.zeros(batch.shape[1], dtype=np.uint32)
        if start == 0:
            x[0] = 0xFFFFFFFF
        for column in batch:
            x = _apply(_WORD_STEP, x ^ column)
        states[start : start + len(x)] = x
    return states


def _combine(states: np.ndarray) -> int:
    """The CRC state after all chunks: state_j pushed through the chunks after it, xor-ed."""
    levels = max(1, int(np.ceil(np.log2(len(states)))))
    padded = np.zeros(1 << levels, dtype=np.uint32)
    padded[len(padded) - len(states) :] = states  # leading zero chunks: zero states add nothing
    matrix = _chunk_matrix()
    while len(padded) > 1:
        pairs, tables = padded.reshape(-1, 2), _byte_tables(matrix)
        padded = _apply(tables, pairs[:, 0]) ^ pairs[:, 1]
        matrix = _apply(tables, matrix)  # twice the zero bytes
    return int(padded[0])


def crc32c(data: bytes | np.ndarray) -> int:
    """The CRC-32C of `data` (bytes, or a uint8 array such as a slice of a memory map)."""
    buffer = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray) else data
    if buffer.dtype != np.uint8 or buffer.ndim != 1:
        raise TypeError(f"crc32c: data must be bytes or a 1-D uint8 array, got {buffer.dtype}")
    whole = len(buffer) // _CHUNK_BYTES * _CHUNK_BYTES
    state = 0xFFFFFFFF
    if whole:
        words = np.ascontiguousarray(buffer[:whole]).view("<u4").reshape(-1, _CHUNK_BYTES // 4)
        state = _combine(_chunk_crcs(words))
    table = _T[0].tolist()
    for byte in buffer[whole:].tobytes():  # fewer than one chunk's bytes
        state = table[(state ^ byte) & 0xFF] ^ (state >> 8)
    return state ^ 0xFFFFFFFF


def unmask(stored: int) -> int:
    """The CRC in a TensorFlow checkpoint entry, which stores it rotated right by 15 bits plus
    a constant (so that CRCs of data holding CRCs stay well mixed)."""
    rotated = (stored - 0xA282EAD8) & 0xFFFFFFFF
    return ((rotated >> 17) | (rotated << 15)) & 0xFFFFFFFF
