"""The TaskModule template every task's LightningModule subclasses.

The template owns what must be the same in every task: the model called with the batch's declared inputs, the
finite-loss check, `train/loss` logged under one DDP sync policy, one evaluation hook for val and test, metrics
logged once per split, pictures drawn on rank zero outside the sanity check, and the optimizer wiring. A task
fills in `training_loss`, `evaluate` and `log_metrics`, and optionally `use_context`, `draw_pictures`, the
health hooks read by `vigil.core.guardrails.HealthMonitor` and the preflight hooks read by `vigil.core.preflight`.
"""

from __future__ import annotations

import inspect
from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pytorch_lightning as pl
import torch
from torch import nn

from vigil.core.batch import Batch
from vigil.core.data import TaskDataModule
from vigil.core.guardrails import check_finite_loss

# The argument a whole-run schedule takes its length in.
TRAINING_STEPS = "num_training_steps"
# A parameter group's factor on the configured learning rate (so that a sweep of the rate moves every group).
LR_SCALE = "lr_scale"

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class TrainingLoss:
    """What a task's training step produced.

    `loss` is backpropagated; `outputs` (detached) reach the health monitor; `terms` are logged per epoch as
    `train/<name>` under the same sync policy as `train/loss`.
    """

    loss: torch.Tensor
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    terms: dict[str, torch.Tensor | float] = field(default_factory=dict)


class TaskModule(pl.LightningModule):
    """Base of the task modules; run.py builds them from the model, loss, masking and optimizer groups.

    `task_name` keys the task's health thresholds; `alert_rule` is the function those thresholds are passed to
    as keyword arguments, so a misspelled threshold is found when the config is validated.
    """

    task_name: ClassVar[str] = "task"
    alert_rule: ClassVar[Callable[..., dict[str, str]] | None] = None
    # One name per test loader: `test`, or `test/<source>` each when the data has several test sets.
    test_splits: tuple[str, ...] = ("test",)

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        masking: Any,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.masking = masking
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    def setup(self, stage: str) -> None:
        """Take what the module needs from the data, through the DataModule's declared `context()`."""
        datamodule = self.trainer.datamodule
        if isinstance(datamodule, TaskDataModule):
            self.use_context(datamodule.context())

    def use_context(self, context: Any) -> None:
        """Receive the DataModule's `context()`; tasks that need nothing from their data ignore it."""

    def forward_batch(self, batch: Batch) -> Any:
        """The model called with exactly the batch's declared input fields, by name."""
        return self.model(**batch.model_inputs())

    @abstractmethod
    def training_loss(self, batch: Batch) -> TrainingLoss:
        """The loss of one training batch, with the outputs the health monitor reads."""

    @abstractmethod
    def evaluate(self, batch: Batch, split: str, batch_idx: int) -> None:
        """Score one val or test batch into the split's metrics (and keep what the pictures need)."""

    @abstractmethod
    def log_metrics(self, split: str) -> None:
        """Compute, log (with `log_split`) and reset the split's metrics; runs on every rank at epoch end."""

    def draw_pictures(self) -> None:
        """Draw the validation pictures; called on rank zero after every validation epoch but the sanity check."""

    def training_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """The task's loss, checked finite before the backward pass, logged as `train/loss` averaged over ranks."""
        result = self.training_loss(batch)
        check_finite_loss(result.loss.detach(), self.global_step, self.current_epoch)
        size = len(batch)
        self.log("train/loss", result.loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size, sync_dist=True)
        for name, value in result.terms.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
        return {"loss": result.loss, **result.outputs}

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Score one validation batch."""
        self.evaluate(batch, "val", batch_idx)

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Score one test batch, under the name of the test set its loader reads."""
        self.evaluate(batch, self.test_splits[dataloader_idx], batch_idx)

    def on_validation_epoch_end(self) -> None:
        """Log the validation metrics; draw pictures on rank zero, never for the sanity check."""
        self.log_metrics("val")
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            self.draw_pictures()

    def on_test_epoch_end(self) -> None:
        """Log the test metrics of every test set."""
        for split in self.test_splits:
            self.log_metrics(split)

    def log_split(self, split: str, values: Mapping[str, torch.Tensor | float]) -> None:
        """Log metric values as `<split>/<name>`.

        Metrics are torchmetrics and already synced across ranks; `sync_dist` only averages identical values.
        """
        if values:
            self.log_dict({f"{split}/{name}": value for name, value in values.items()}, sync_dist=True)

    def health_stats(self, outputs: dict[str, torch.Tensor], batch: Batch) -> dict[str, float]:
        """The task's `health/*` statistics of one training batch."""
        return {}

    def validation_health_stats(self) -> dict[str, float]:
        """The task's `health/val_*` statistics of the validation set just finished (empty when it has none)."""
        return {}

    def health_alerts(self, stats: dict[str, float], thresholds: dict[str, float]) -> dict[str, str]:
        """Alerts raised by `stats`, by name, each with what it means and what to try: the task's `alert_rule`
        called with its thresholds (a task whose rule needs more than the thresholds overrides this)."""
        rule = type(self).alert_rule
        return rule(stats, **thresholds) if rule is not None else {}

    def preflight_outputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Per-sample outputs (first dimension: the samples) that the preflight's independence check
        differentiates against the other samples' images; the model's output by default."""
        return {"output": self.forward_batch(batch)}

    def chance_loss(self, batch: Batch) -> float | None:
        """The task's loss of an uninformed prediction on `batch`, which the loss at initialisation should be near;
        None when the task declares none."""
        return None

    def preflight_figure(self, batch: Batch) -> Figure | None:
        """The first training batch as the model gets it, with its targets; None when the task draws none."""
        return None

    def unused_parameters(self) -> dict[str, str]:
        """Name patterns (fnmatch) of trainable parameters the training loss legitimately leaves without gradient,
        each with why; the preflight's gradient check excuses them and names every other one."""
        return {}

    def parameter_groups(self) -> Any:
        """What the optimizer trains: every parameter; a task overrides this for per-group settings (a group's
        `lr_scale` multiplies the configured learning rate)."""
        return self.parameters()

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The configured optimizer over `parameter_groups()`, each group's `lr_scale` applied to its rate."""
        optimizer = self.optimizer_factory(params=self.parameter_groups())
        for group in optimizer.param_groups:
            group["lr"] *= group.get(LR_SCALE, 1.0)
        return optimizer

    def configure_optimizers(self) -> Any:
        """The configured optimizer over `parameter_groups()`, and the scheduler when one is configured."""
        optimizer = self.build_optimizer()
        if self.scheduler_factory is None:
            return optimizer
        arguments: dict[str, Any] = {"optimizer": optimizer}
        # A schedule over the whole run (transformers' get_*_schedule_with_warmup) is told its length when the
        # configuration leaves it open, as the Hugging Face Trainer tells it.
        length = inspect.signature(self.scheduler_factory).parameters.get(TRAINING_STEPS)
        if length is not None and length.default is inspect.Parameter.empty:
            arguments[TRAINING_STEPS] = int(self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(**arguments)}}
