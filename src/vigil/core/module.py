"""What every task's LightningModule shares: the wiring of model, loss, masking, optimizer and scheduler."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn


class TaskModule(pl.LightningModule):
    """Base of the task modules; run.py builds them from the model, loss, masking and optimizer groups.

    A task sets `task_name`, implements the steps, and reports its health statistics and alerts for
    `vigil.core.guardrails.HealthMonitor`.
    """

    task_name = "task"

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        masking: Callable[..., Any],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.masking = masking
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    def health_stats(self, outputs: dict[str, torch.Tensor], batch: Any) -> dict[str, float]:
        """The task's `health/*` statistics of one training batch."""
        return {}

    def validation_health_stats(self) -> dict[str, float]:
        """The task's `health/val_*` statistics of the validation set just finished (empty when it has none)."""
        return {}

    def health_alerts(self, stats: dict[str, float], thresholds: dict[str, float]) -> dict[str, str]:
        """Alerts raised by `stats`, by name, each with what it means and what to try."""
        return {}

    def parameter_groups(self) -> Any:
        """What the optimizer trains: every parameter; a task overrides this for per-group settings."""
        return self.parameters()

    def configure_optimizers(self) -> Any:
        """The configured optimizer over `parameter_groups()`, and the scheduler when one is configured."""
        optimizer = self.optimizer_factory(params=self.parameter_groups())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer)}}
