"""The segmentation LightningModule: model, masking, loss, metrics, health and pictures wired together."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric

from vigil.core.guardrails import check_finite_loss
from vigil.core.module import TaskModule
from vigil.core.pictures import publish_figure
from vigil.tasks.segmentation.data import SegmentationBatch
from vigil.tasks.segmentation.health import collapse_alerts, health_stats
from vigil.tasks.segmentation.metrics import SegmentationOverlap
from vigil.tasks.segmentation.pictures import overlay_grid


class SegmentationModule(TaskModule):
    """Trains a segmentation model on the samples and pixels its masking strategy lets count."""

    task_name = "segmentation"

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        masking: Callable[..., Any],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        num_classes: int = 1,
        ignore_index: int | None = None,
        class_names: list[str] | None = None,
        threshold: float = 0.5,
        pictures: int = 6,
    ) -> None:
        super().__init__(model, loss, masking, optimizer, scheduler)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.threshold = threshold
        self.pictures = pictures
        self.metrics = nn.ModuleDict(
            {split: SegmentationOverlap(num_classes, ignore_index, threshold, class_names) for split in ("val", "test")}
        )
        self.picture_batch: tuple[torch.Tensor, ...] | None = None
        # Predicted and true foreground of annotated validation images, for the validation collapse check.
        self.val_foreground = nn.ModuleDict({"pred_mean": MeanMetric(), "target_mean": MeanMetric()})

    def training_step(self, batch: SegmentationBatch, batch_idx: int) -> dict[str, torch.Tensor]:
        logits = self.model(image=batch.image)
        targets = self.masking(logits, batch)
        # A batch with nothing to learn from still touches every parameter, so DDP's gradient sync holds.
        loss = self.loss(targets.logits, targets.mask) if targets is not None else logits.sum() * 0.0
        check_finite_loss(loss.detach(), self.global_step, self.current_epoch)
        size = len(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        for name, value in getattr(self.loss, "terms", {}).items():
            self.log(f"train/loss/{name}", value, on_step=False, on_epoch=True, batch_size=size)
        self.log(
            "train/annotated_fraction", batch.annotated.float().mean(), on_step=False, on_epoch=True, batch_size=size
        )
        return {"loss": loss, "logits": logits.detach()}

    def validation_step(self, batch: SegmentationBatch, batch_idx: int) -> None:
        logits = self._evaluate(batch, "val")
        for name, value in health_stats(logits, batch.mask, batch.annotated, self.threshold).items():
            self.val_foreground[name].update(value, weight=int(batch.annotated.sum()))
        if batch_idx == 0 and self.picture_batch is None:
            self.picture_batch = (batch.image, batch.mask, batch.annotated, batch.name)

    def test_step(self, batch: SegmentationBatch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: SegmentationBatch, split: str) -> torch.Tensor:
        logits = self.model(image=batch.image)
        if batch.annotated.any():
            self.metrics[split].update(logits[batch.annotated], batch.mask[batch.annotated])
        return logits

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")
        for metric in self.val_foreground.values():
            metric.reset()
        if self.picture_batch is not None and not self.trainer.sanity_checking and self.trainer.is_global_zero:
            self._draw_pictures()
        self.picture_batch = None

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _log_metrics(self, split: str) -> None:
        metric = self.metrics[split]
        values = metric.compute()
        # Already synced by torchmetrics; sync_dist only averages identical values (and quiets Lightning).
        self.log_dict({f"{split}/{name}": value for name, value in values.items()}, sync_dist=True)
        metric.reset()

    @torch.no_grad()
    def _draw_pictures(self) -> None:
        image, mask, annotated, names = (item[: self.pictures] for item in self.picture_batch)
        logits = self.model(image=image)
        if self.num_classes == 1:
            predicted = (torch.sigmoid(logits[:, 0]) > self.threshold).long()
        else:
            predicted = logits.argmax(1)
        publish_figure(self.trainer, overlay_grid(image, mask, predicted, annotated, list(names)), "val_predictions")

    def health_stats(self, outputs: dict[str, torch.Tensor], batch: SegmentationBatch) -> dict[str, float]:
        """Predicted vs true foreground fraction of this training batch."""
        return health_stats(outputs["logits"], batch.mask, batch.annotated, self.threshold)

    def validation_health_stats(self) -> dict[str, float]:
        """Predicted vs true foreground over the annotated validation images (synced across ranks)."""
        if self.val_foreground["pred_mean"].update_count == 0:
            return {}
        return {name: float(metric.compute()) for name, metric in self.val_foreground.items()}

    def health_alerts(self, stats: dict[str, float], thresholds: dict[str, float]) -> dict[str, str]:
        """Prediction collapse, judged with the thresholds of `conf/callbacks/health.yaml`."""
        return collapse_alerts(stats, **thresholds)
