"""ELECTRA's example building (build_pretraining_dataset.py's ExampleBuilder), same decisions in
the same order of random draws, so that a given random.Random gives the official examples."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import NamedTuple

SINGLE_SEGMENT_PROB = 0.1  # examples with one segment, as in classification tasks
RANDOM_LENGTH_PROB = 0.05  # examples whose target length is drawn from [5, max_length]
NO_SPLIT = 100000  # the first segment's target when the example has one segment


def clean_line(line: str) -> str:
    """A line as it is tokenised: stripped, any newline left inside made a space; "" is blank."""
    return line.strip().replace("\n", " ")


class Example(NamedTuple):
    input_ids: list[int]  # [CLS] A [SEP] (B [SEP]), unpadded
    first_length: int  # len([CLS] A [SEP]): token type 0 before it, 1 from it on

    def token_type_ids(self) -> list[int]:
        return [0] * self.first_length + [1] * (len(self.input_ids) - self.first_length)


class ExampleBuilder:
    """Accumulates tokenised sentences toward a target length and cuts them into examples.

    A blank line ends a document: what has accumulated becomes an example. Sentences go to the
    first segment until its target ((target - 3) // 2) would be passed; the sentence that would
    pass it still goes there half of the time if the second segment is empty. Segments are then
    truncated to fit [CLS] A [SEP] B [SEP] in max_length.
    """

    def __init__(
        self,
        encode: Callable[[str], list[int]],
        max_length: int,
        cls_id: int,
        sep_id: int,
        rng: random.Random,
    ):
        if max_length < 5:
            raise ValueError(f"max_length must be at least 5, got {max_length}")
        self._encode, self._max_length = encode, max_length
        self._cls, self._sep, self._rng = cls_id, sep_id, rng
        self._sentences: list[list[int]] = []
        self._length = 0
        self._target_length = max_length

    def add_line(self, line: str) -> Example | None:
        """Adds one line (a sentence, or a blank line between documents); returns the example
        it completes, if any."""
        line = clean_line(line)
        return self.add_encoded(self._encode(line) if line else None)

    def add_encoded(self, ids: list[int] | None) -> Example | None:
        """add_line for a line tokenised beforehand: its ids, or None for a blank line."""
        if ids is None and self._length != 0:
            return self._create_example()
        ids = [] if ids is None else ids
        self._sentences.append(ids)
        self._length += len(ids)
        if self._length >= self._target_length:
            return self._create_example()
        return None

    def flush(self) -> Example | None:
        """The example of whatever has accumulated (the end of a file)."""
        return self.add_line("")

    def _create_example(self) -> Example:
        rng = self._rng
        if rng.random() < SINGLE_SEGMENT_PROB:
            first_target = NO_SPLIT
        else:
            first_target = (self._target_length - 3) // 2  # room for [CLS] and two [SEP]
        first: list[int] = []
        second: list[int] = []
        for sentence in self._sentences:
            # Short-circuit order matters: the coin is only tossed when the sentence would
            # overflow a non-empty first segment while the second is still empty.
            if (
                not first
                or len(first) + len(sentence) < first_target
                or (not second and len(first) < first_target and rng.random() < 0.5)
            ):
                first += sentence
            else:
                second += sentence
        first = first[: self._max_length - 2]
        second = second[: max(0, self._max_length - len(first) - 3)]
        self._sentences, self._length = [], 0
        if rng.random() < RANDOM_LENGTH_PROB:
            self._target_length = rng.randint(5, self._max_length)
        else:
            self._target_length = self._max_length
        ids = [self._cls] + first + [self._sep]
        first_length = len(ids)
        if second:
            ids += second + [self._sep]
        return Example(ids, first_length)
