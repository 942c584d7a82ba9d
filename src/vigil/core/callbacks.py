"""The callbacks of `conf/callbacks/default.yaml` that need a switch Lightning's own classes do not have.

A factory returns None for a callback that is switched off (the run leaves it out), so that a single key on the
command line turns it on or off.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, EarlyStopping, LearningRateMonitor, RichProgressBar


def early_stopping(monitor: str, mode: str, patience: int | None = None, min_delta: float = 0.0) -> Callback | None:
    """Lightning's EarlyStopping once `patience` is given: training stops after `patience` validations in which
    `monitor` improved by no more than `min_delta`. Without a patience, training is never stopped early."""
    if patience is None:
        return None
    return EarlyStopping(monitor=monitor, mode=mode, patience=patience, min_delta=min_delta)


def progress_bar(enabled: bool, leave: bool = False) -> Callback | None:
    """Rich's progress bar, or none when the Trainer's `enable_progress_bar` is false (it refuses one then)."""
    return RichProgressBar(leave=leave) if enabled else None


class RunLearningRateMonitor(LearningRateMonitor):
    """Lightning's LearningRateMonitor (`lr-<optimizer>`), silent in a run without a logger (`logger=none`),
    which Lightning's refuses to start."""

    def on_train_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        """Name the learning rates to log, when there is a logger to log them to."""
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        """Log the learning rates of this step (`logging_interval: step`)."""
        if trainer.loggers:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        """Log the learning rates of this epoch (`logging_interval: epoch`)."""
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)
