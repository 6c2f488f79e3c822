"""Pretraining data: corpora, ELECTRA's example building, sharded binary datasets."""

from electra_fast.data.examples import Example, ExampleBuilder

__all__ = ["Example", "ExampleBuilder"]
