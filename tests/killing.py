"""A callback a test adds to a training run (`+callbacks.kill._target_=killing.KillAtStep`) to kill it for real."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytorch_lightning as pl


class KillAtStep(pl.Callback):
    """SIGKILL the training process once `step` optimizer steps are done, before the next batch trains:
    no exception, no cleanup, nothing flushed, as when the machine takes the job away."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        """Kill when the step is reached."""
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
