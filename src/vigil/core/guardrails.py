"""The guardrail protocol: an audit of the data before fit, health monitors during fit, the sanity overfit.

A task provides the facts (its DataModule's `audit()`, its module's `health_stats()` and `health_alerts()`);
this module turns them into reports, logs, alerts and stops, the same way for every task.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn

from vigil.core.errors import HealthAlertError, NonFiniteLossError, SanityOverfitError

log = logging.getLogger(__name__)


@dataclass
class AuditReport:
    """Facts about the data that predict a silent failure: per-split numbers, warnings and hard errors."""

    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def count_all_samples(self, splits: tuple[str, ...] = ("train", "val", "test")) -> None:
        """Give the `all` entry the samples of every split, so each entry of `splits` has `samples`."""
        total = sum(self.splits[split].get("samples", 0) for split in splits if split in self.splits)
        self.splits.setdefault("all", {})["samples"] = total

    def to_json(self, path: Path) -> None:
        """Write the report as `audit.json`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=False) + "\n")

    def scalars(self) -> dict[str, float]:
        """The numeric facts as flat `audit/<split>/<key>` metrics for the loggers."""
        flat = {
            f"audit/{split}/{key}": float(value)
            for split, facts in self.splits.items()
            for key, value in facts.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        flat["audit/warnings"] = float(len(self.warnings))
        flat["audit/errors"] = float(len(self.errors))
        return flat

    def render(self) -> str:
        """A short human-readable summary for the terminal."""
        lines = ["audit:"]
        for split, facts in self.splits.items():
            shown = ", ".join(f"{k}={_fmt(v)}" for k, v in facts.items() if not isinstance(v, dict | list))
            lines.append(f"  {split}: {shown}")
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  ERROR: {e}" for e in self.errors]
        return "\n".join(lines)


def _fmt(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class HealthMonitor(pl.Callback):
    """Every `every_n_steps` training steps, logs the task's `health/*` statistics and checks its alerts.

    An alert that holds for `patience` consecutive checks is logged as a warning (and `health/alert`); with
    `stop_on_alert` the run stops with the alert's explanation instead of training on in silence.
    """

    def __init__(
        self,
        every_n_steps: int = 10,
        patience: int = 3,
        stop_on_alert: bool = False,
        thresholds: dict[str, dict[str, float]] | None = None,
    ) -> None:
        self.every_n_steps = every_n_steps
        self.patience = patience
        self.stop_on_alert = stop_on_alert
        self.thresholds = {task: dict(values) for task, values in (thresholds or {}).items()}
        self.streak: dict[str, int] = {}
        self.alerts_raised: list[str] = []
        self.batches_seen = 0

    def state_dict(self) -> dict[str, Any]:
        """The check counter and alert streaks, so a resumed run checks and alerts at the same steps."""
        return {
            "batches_seen": self.batches_seen,
            "streak": dict(self.streak),
            "alerts_raised": list(self.alerts_raised),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue a checkpoint's counter and streaks."""
        self.batches_seen = state_dict["batches_seen"]
        self.streak = dict(state_dict["streak"])
        self.alerts_raised = list(state_dict["alerts_raised"])

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Compute, log and judge the health statistics of this batch, every N steps."""
        # Counted in batches, not optimizer steps, so the first batch is always checked.
        self.batches_seen += 1
        if (self.batches_seen - 1) % self.every_n_steps != 0 or not isinstance(outputs, dict):
            return
        stats = {name: float(value) for name, value in pl_module.health_stats(outputs, batch).items()}
        self._judge(trainer, pl_module, stats, prefix="")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Judge the task's statistics of the whole validation set, each validation during fit.

        A model can fit its training batches and still collapse on held-out images (e.g. when most positives are
        trained as negatives); only the validation set shows that.
        """
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        stats = {name: float(value) for name, value in pl_module.validation_health_stats().items()}
        if stats:
            self._judge(trainer, pl_module, stats, prefix="val_")

    def _judge(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stats: dict[str, float], prefix: str) -> None:
        alerts = {
            f"{prefix}{name}": text
            for name, text in pl_module.health_alerts(stats, self._thresholds(pl_module)).items()
        }
        for name in [name for name in self.streak if name.startswith(prefix) and name not in alerts]:
            self.streak[name] = 0
        for name in alerts:
            self.streak[name] = self.streak.get(name, 0) + 1
        firing = {name: message for name, message in alerts.items() if self.streak[name] >= self.patience}
        stats["alert"] = float(bool(firing))
        values = {f"health/{prefix}{k}": v for k, v in stats.items()}
        if prefix:
            pl_module.log_dict(values, on_step=False, on_epoch=True)
        else:
            pl_module.log_dict(values, on_step=True, on_epoch=False)
        for name, message in firing.items():
            self._raise_alert(trainer, name, message)

    def _thresholds(self, pl_module: pl.LightningModule) -> dict[str, float]:
        return self.thresholds.get(pl_module.task_name, {})

    def _raise_alert(self, trainer: pl.Trainer, name: str, message: str) -> None:
        text = f"health alert '{name}' at step {trainer.global_step}: {message}"
        if text not in self.alerts_raised and trainer.is_global_zero:
            log.warning(text)
        self.alerts_raised.append(text)
        if self.stop_on_alert:
            raise HealthAlertError(text + " (stopping: callbacks.health_monitor.stop_on_alert=true)")


class SanityOverfit(pl.Callback):
    """`debug=overfit`: the epoch loss on a few batches must fall below `threshold`, else the run fails."""

    def __init__(self, threshold: float, monitor: str = "train/loss_epoch", hint: str = "") -> None:
        self.threshold = threshold
        self.monitor = monitor
        self.hint = hint
        self.best = float("inf")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Track the best epoch loss; stop as soon as it is below the threshold."""
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        self.best = min(self.best, float(value))
        if self.best < self.threshold:
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fail loudly when the loss never got below the threshold."""
        if self.best < self.threshold:
            log.info("sanity overfit passed: %s %.4g < %.4g", self.monitor, self.best, self.threshold)
            return
        raise SanityOverfitError(
            f"debug=overfit: {self.monitor} reached {self.best:.4g} after {trainer.current_epoch + 1} epochs, "
            f"not below {self.threshold:.4g}; a model that cannot memorise a few batches is not learning "
            f"({self.hint or 'check the targets and the masking'})"
        )


def check_finite_loss(loss: torch.Tensor, step: int, epoch: int) -> None:
    """Raise NonFiniteLossError when the loss is NaN or infinite (checked before the backward pass)."""
    if not torch.isfinite(loss).all():
        raise NonFiniteLossError(
            f"train/loss is {loss.item()} at step {step} (epoch {epoch}); training stopped before the update, "
            "checkpoints/last.ckpt from before it is intact (lower the learning rate or check the inputs)"
        )
