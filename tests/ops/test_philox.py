"""The torch Philox against the Random123 known-answer vectors (kat_vectors, philox4x32_10)."""

import pytest
import torch

from electra_fast.ops._philox import philox4x32_10

KNOWN_ANSWERS = [  # (counter, key, output), from Random123's kat_vectors
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize(("counter", "key", "expected"), KNOWN_ANSWERS)
def test_known_answers(counter, key, expected, device):
    words = philox4x32_10(
        tuple(torch.tensor([c], device=device) for c in counter),
        tuple(torch.tensor(k, device=device) for k in key),
    )
    assert tuple(int(w) for w in words) == expected


def test_batched_equals_one_at_a_time():
    counters = torch.randint(0, 2**32, (4, 50))
    key = (torch.tensor(0x12345678), torch.tensor(0x9ABCDEF0))
    batched = philox4x32_10(tuple(counters), key)
    for j in range(0, 50, 7):
        single = philox4x32_10(tuple(counters[:, j : j + 1]), key)
        assert [int(w[j]) for w in batched] == [int(w) for w in single]
