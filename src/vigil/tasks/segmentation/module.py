"""The segmentation LightningModule: model, masking, loss, metrics, health and pictures wired together."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from vigil.core.files import IMAGENET
from vigil.core.module import TaskModule, TrainingLoss
from vigil.core.pictures import publish_figure
from vigil.tasks.segmentation.health import chance_loss, health_alerts, health_stats
from vigil.tasks.segmentation.masking import SegmentationMasking
from vigil.tasks.segmentation.metrics import SegmentationOverlap
from vigil.tasks.segmentation.pictures import overlay_grid
from vigil.tasks.segmentation.records import SegmentationBatch, SegmentationContext


class SegmentationModule(TaskModule):
    """Trains a segmentation model on the samples and pixels its masking strategy lets count."""

    task_name = "segmentation"
    alert_rule = staticmethod(health_alerts)

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        masking: SegmentationMasking,
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
        self.threshold = threshold
        self.pictures = pictures
        self.metrics = nn.ModuleDict(
            {split: SegmentationOverlap(num_classes, ignore_index, threshold, class_names) for split in ("val", "test")}
        )
        self.picture_batch: SegmentationBatch | None = None
        self.normalization = IMAGENET
        # Predicted and true foreground of annotated validation images, for the validation collapse check.
        self.val_foreground = nn.ModuleDict({"pred_mean": MeanMetric(), "target_mean": MeanMetric()})

    def use_context(self, context: SegmentationContext) -> None:
        """Score each test set on its own (`test/<source>/dice`) when the data has several; draw images with the
        data's normalisation undone."""
        self.normalization = context.normalization
        if not context.test_sources:
            return
        self.test_splits = tuple(f"test/{source}" for source in context.test_sources)
        template = self.metrics["test"]
        for split in self.test_splits:
            if split not in self.metrics:
                self.metrics[split] = SegmentationOverlap(
                    template.num_classes, template.ignore_index, template.threshold, template.class_names
                ).to(self.device)

    def training_loss(self, batch: SegmentationBatch) -> TrainingLoss:
        """The loss on what the masking lets count; the logits go to the collapse monitor."""
        logits = self.forward_batch(batch)
        targets = self.masking(logits, batch)
        # A batch with nothing to learn from still touches every parameter, so DDP's gradient sync holds.
        loss = self.loss(targets.logits, targets.mask) if targets is not None else logits.sum() * 0.0
        terms = {f"loss/{name}": value for name, value in getattr(self.loss, "terms", {}).items()}
        terms["annotated_fraction"] = batch.annotated.float().mean()
        return TrainingLoss(loss, outputs={"logits": logits.detach()}, terms=terms)

    def evaluate(self, batch: SegmentationBatch, split: str, batch_idx: int) -> None:
        """Dice/IoU on the annotated samples; during validation also the collapse statistics and a picture batch."""
        logits = self.forward_batch(batch)
        self.score(split, logits, batch)
        if split != "val":
            return
        for name, value in health_stats(logits, batch.mask, batch.annotated, self.threshold).items():
            self.val_foreground[name].update(value, weight=int(batch.annotated.sum()))
        if self.picture_batch is None:
            self.picture_batch = batch

    def score(self, split: str, logits: torch.Tensor, batch: SegmentationBatch) -> None:
        """Dice/IoU of the annotated samples: at each image's own size when the batch carries `full_mask` (the
        logits upsampled bilinearly to it, as PraNet's test script does), else at the input size."""
        if batch.full_mask is None:
            if batch.annotated.any():
                self.metrics[split].update(logits[batch.annotated], batch.mask[batch.annotated])
            return
        for index in batch.annotated.nonzero().flatten().tolist():
            truth = batch.full_mask[index]
            upsampled = F.interpolate(logits[index : index + 1], size=truth.shape, mode="bilinear", align_corners=False)
            self.metrics[split].update(upsampled, truth[None])

    def log_metrics(self, split: str) -> None:
        """Log and reset the split's Dice/IoU (and the validation foreground statistics, already judged)."""
        metric = self.metrics[split]
        self.log_split(split, metric.compute())
        metric.reset()
        if split == "val":
            for foreground in self.val_foreground.values():
                foreground.reset()

    def on_validation_epoch_end(self) -> None:
        """As every task; the picture batch is kept for one validation only."""
        super().on_validation_epoch_end()
        self.picture_batch = None

    @torch.no_grad()
    def draw_pictures(self) -> None:
        """Image / ground truth / prediction overlays of the first validation samples."""
        if self.picture_batch is None or not self.pictures:
            return
        batch = self.picture_batch.first(self.pictures)
        logits = self.forward_batch(batch)
        if self.num_classes == 1:
            predicted = (torch.sigmoid(logits[:, 0]) > self.threshold).long()
        else:
            predicted = logits.argmax(1)
        figure = overlay_grid(batch.image, batch.mask, predicted, batch.annotated, batch.name, self.normalization)
        publish_figure(self.trainer, figure, "val_predictions")

    @torch.no_grad()
    def chance_loss(self, batch: SegmentationBatch) -> float | None:
        """The loss of a constant prediction at the batch's foreground rate (see `health.chance_loss`)."""
        return chance_loss(self.loss, self.masking, self.forward_batch(batch), batch)

    def preflight_figure(self, batch: SegmentationBatch) -> plt.Figure:
        """The first training images as the model gets them (augmented), with their masks."""
        shown = batch.first(self.pictures or 6)
        return overlay_grid(shown.image, shown.mask, None, shown.annotated, shown.name, self.normalization)

    def health_stats(self, outputs: dict[str, torch.Tensor], batch: SegmentationBatch) -> dict[str, float]:
        """Predicted vs true foreground fraction of this training batch."""
        return health_stats(outputs["logits"], batch.mask, batch.annotated, self.threshold)

    def validation_health_stats(self) -> dict[str, float]:
        """Predicted vs true foreground over the annotated validation images (synced across ranks)."""
        if self.val_foreground["pred_mean"].update_count == 0:
            return {}
        return {name: float(metric.compute()) for name, metric in self.val_foreground.items()}
