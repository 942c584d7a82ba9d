"""The CAPE LightningModule: episodes through the model, masked loss, PCK against the support baseline, pictures."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from vigil.core.files import IMAGENET, Normalization, denormalize
from vigil.core.module import TaskModule, TrainingLoss
from vigil.core.pictures import publish_figure
from vigil.tasks.cape import health
from vigil.tasks.cape.masking import CapeMasking, labelled_in_query_and_supports
from vigil.tasks.cape.metrics import MPCK_THRESHOLDS, PCK
from vigil.tasks.cape.model import CapeModel, CapeOutput
from vigil.tasks.cape.pictures import EpisodePicture, episode_grid
from vigil.tasks.cape.records import CapeBatch, CapeContext

EVALUATED = ("val", "test")


class CapeModule(TaskModule):
    """Trains on the keypoints the masking counts; scores PCK in original pixels, and the same PCK of simply
    predicting the support's coordinates (`pck_support_baseline`), so every run reports how far it beats that."""

    task_name = "cape"
    alert_rule = health.health_alerts

    def __init__(
        self,
        model: CapeModel,
        loss: nn.Module,
        masking: CapeMasking,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        threshold: float = 0.2,
        mpck_thresholds: Sequence[float] = MPCK_THRESHOLDS,
        pictures: int = 4,
    ) -> None:
        super().__init__(model, loss, masking, optimizer, scheduler)
        self.pictures = pictures
        self.metrics = nn.ModuleDict({split: PCK(threshold, mpck_thresholds) for split in EVALUATED})
        self.baselines = nn.ModuleDict({split: PCK(threshold, mpck_thresholds) for split in EVALUATED})
        self.category_names: dict[int, str] = {}
        self.normalization = IMAGENET
        self.picture_rows: list[EpisodePicture] = []

    def use_context(self, context: CapeContext) -> None:
        """Learn the category names, for the per-category metric names, and the input normalisation."""
        self.category_names = dict(context.category_names)
        self.normalization = context.normalization

    def training_loss(self, batch: CapeBatch) -> TrainingLoss:
        """The loss over the keypoints the masking counts; the weight and predictions go to the health monitor."""
        output: CapeOutput = self.forward_batch(batch)
        weight = self.masking(batch.query_visibility, batch.support_visibility, batch.keypoint_mask)
        loss = self.loss(output, batch.query_keypoints, weight)
        return TrainingLoss(loss, outputs={"weight": weight.detach(), "keypoints": output.keypoints.detach()})

    def evaluate(self, batch: CapeBatch, split: str, batch_idx: int) -> None:
        """PCK (and NME, AUC, EPE) of the predictions and PCK of the support baseline, over the keypoints the
        protocol scores."""
        output: CapeOutput = self.forward_batch(batch)
        valid = scored_keypoints(batch)
        support = support_coordinates(batch.support_keypoints, batch.support_weights)
        truth, bbox, category = batch.query_keypoints_original, batch.query_bbox, batch.category_id
        predicted = to_original(output.keypoints, batch.crop_to_original)
        self.metrics[split].update(predicted, truth, valid, bbox, category)
        self.baselines[split].update(to_original(support, batch.crop_to_original), truth, valid, bbox, category)
        if split == "val" and batch_idx == 0 and self.pictures:
            self.picture_rows = picture_rows(batch, output.keypoints, valid, self.pictures, self.normalization)

    def log_metrics(self, split: str) -> None:
        """`pck`, `mpck`, `pck_query_mean`, `nme`, `auc`, `epe`, `samples`, `pck_support_baseline` and
        `pck/<category>` of the split."""
        values = self.metrics[split].compute()
        baseline = self.baselines[split].compute()
        self.metrics[split].reset()
        self.baselines[split].reset()
        if values:
            self.log_split(split, self.split_values(values, baseline))

    def split_values(self, values: dict[str, torch.Tensor], baseline: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The logged values of one split, by name, from the model's and the baseline's computed PCK."""
        logs = {name: values[name] for name in ("pck", "mpck", "pck_query_mean", "nme", "auc", "epe", "samples")}
        logs["pck_support_baseline"] = baseline["pck"]
        # torchmetrics squeezes one-element results: a single category comes back as a scalar.
        ids, per_category = values["category_ids"].reshape(-1), values["category_pck"].reshape(-1)
        for category_id, value in zip(ids.tolist(), per_category, strict=True):
            logs[f"pck/{metric_name(self.category_names.get(category_id, str(category_id)))}"] = value
        return logs

    def draw_pictures(self) -> None:
        """The first validation episodes: support, true and predicted keypoints."""
        if self.picture_rows:
            publish_figure(self.trainer, episode_grid(self.picture_rows), "val_keypoints")
        self.picture_rows = []

    def preflight_outputs(self, batch: CapeBatch) -> dict[str, torch.Tensor]:
        """The predicted keypoints, one row per episode."""
        return {"keypoints": self.forward_batch(batch).keypoints}

    @torch.no_grad()
    def chance_loss(self, batch: CapeBatch) -> float:
        """The loss of keypoints at the crop centre with uniform heatmaps (see `health.chance_loss`)."""
        weight = self.masking(batch.query_visibility, batch.support_visibility, batch.keypoint_mask)
        return health.chance_loss(self.loss, self.forward_batch(batch), batch.query_keypoints, weight)

    def preflight_figure(self, batch: CapeBatch) -> plt.Figure:
        """The first training episodes as the model gets them (augmented crops), with the keypoints the loss counts."""
        weight = self.masking(batch.query_visibility, batch.support_visibility, batch.keypoint_mask)
        return episode_grid(picture_rows(batch, None, weight, self.pictures or 4, self.normalization))

    def health_stats(self, outputs: dict[str, torch.Tensor], batch: CapeBatch) -> dict[str, float]:
        """Supervised keypoints of the batch, their share, and the spread of the predictions."""
        return health.health_stats(outputs["weight"], batch.keypoint_mask, outputs["keypoints"])


def scored_keypoints(batch: CapeBatch) -> torch.Tensor:
    """Boolean B x K: what the protocol scores, labelled as annotated in the query and every support, wherever
    it falls relative to the crops (unlike the loss, which cannot use a keypoint outside its crop)."""
    return labelled_in_query_and_supports(
        batch.query_annotated_visibility, batch.support_annotated_visibility, batch.keypoint_mask
    )


def to_original(points: torch.Tensor, crop_to_original: torch.Tensor) -> torch.Tensor:
    """B x K x 2 crop-normalised points mapped to original pixels by each sample's 2 x 3 affine."""
    return torch.einsum("bkj,bij->bki", points, crop_to_original[:, :, :2]) + crop_to_original[:, None, :, 2]


def support_coordinates(keypoints: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """B x K x 2: each keypoint's crop-normalised position averaged over the shots where it is labelled."""
    return (keypoints * weights.unsqueeze(-1)).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-6).unsqueeze(-1)


def metric_name(category: str) -> str:
    """A category name safe as a metric-name segment (letters, digits, `_`, `-`, `.`)."""
    return re.sub(r"[^\w.-]+", "_", category)


def picture_rows(
    batch: CapeBatch,
    predicted: torch.Tensor | None,
    scored: torch.Tensor,
    count: int,
    normalization: Normalization = IMAGENET,
) -> list[EpisodePicture]:
    """The first `count` episodes of a batch with the `scored` keypoints and, when given, the predicted ones, in
    crop pixels, for `episode_grid`."""
    size = batch.query_images.shape[-1]

    def pixels(points: torch.Tensor) -> np.ndarray:
        # Normalised coordinates put pixel edges at integers; matplotlib puts pixel centres there.
        return points.detach().float().cpu().numpy() * size - 0.5

    rows = []
    for i in range(min(count, len(batch))):
        real = int(batch.keypoint_mask[i].sum())
        rows.append(
            EpisodePicture(
                category=batch.category_name[i],
                support_image=to_pixels(batch.support_images[i, 0], normalization),
                support_keypoints=pixels(batch.support_keypoints[i, 0, :real]),
                support_labelled=batch.support_weights[i, 0, :real].cpu().numpy() > 0,
                query_image=to_pixels(batch.query_images[i], normalization),
                true_keypoints=pixels(batch.query_keypoints[i, :real]),
                predicted_keypoints=None if predicted is None else pixels(predicted[i, :real]),
                scored=scored[i, :real].cpu().numpy() > 0,
                skeleton=batch.skeleton[i],
            )
        )
    return rows


def to_pixels(image: torch.Tensor, normalization: Normalization = IMAGENET) -> np.ndarray:
    """A normalised 3 x H x W tensor back to H x W x 3 uint8."""
    return (denormalize(image.detach().float().cpu(), normalization) * 255).byte().permute(1, 2, 0).numpy()
