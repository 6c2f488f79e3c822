"""Pretraining: the official optimiser and schedule, hyper-parameters, checkpoints, the loop."""

from electra_fast.pretraining.hparams import Hparams

__all__ = ["Hparams"]
