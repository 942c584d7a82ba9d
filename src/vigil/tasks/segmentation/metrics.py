"""Dice and IoU per image and over the dataset, as a torchmetrics Metric (state synced across DDP ranks).

The counts come from `smp.metrics.get_stats`. Rules, stated once:
- Only annotated samples are scored; ignored pixels are not counted.
- `dice` / `iou`: the mean over images of each image's score (mDice / mIoU as PraNet reports them). An image
  with an empty ground truth and an empty prediction scores 1 (smp's `zero_division=1`); an empty ground truth
  with any predicted foreground scores 0, so false alarms on negative images are punished.
- `dice_dataset` / `iou_dataset`: one score from the counts summed over all images (micro).
- `samples`: the number of images scored (every annotated image once, also under DDP).
- Multiclass: per-image scores average the foreground classes (1..C-1), and `dice/<class>` / `iou/<class>`
  are each class's dataset-level score.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


class SegmentationOverlap(Metric):
    """Accumulates per-image true/false positive/negative counts; computes Dice and IoU as documented above."""

    full_state_update = False

    def __init__(
        self,
        num_classes: int = 1,
        ignore_index: int | None = None,
        threshold: float = 0.5,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.threshold = threshold
        self.class_names = class_names or [f"class_{i}" for i in range(max(num_classes, 2))]
        for name in ("tp", "fp", "fn", "tn"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, logits: torch.Tensor, mask: torch.Tensor) -> None:
        """Add a batch of logits (N, C, H, W) and index masks (N, H, W)."""
        tp, fp, fn, tn = overlap_counts(logits, mask, self.num_classes, self.ignore_index, self.threshold)
        self.tp.append(tp)
        self.fp.append(fp)
        self.fn.append(fn)
        self.tn.append(tn)

    def compute(self) -> dict[str, torch.Tensor]:
        """`dice`, `iou`, `dice_dataset`, `iou_dataset`, `samples`, and per class when multiclass."""
        # Before a DDP sync the states are lists of per-batch tensors; after it, one concatenated tensor.
        if isinstance(self.tp, list) and not self.tp:
            return {}
        tp, fp, fn, tn = (dim_zero_cat(getattr(self, name)) for name in ("tp", "fp", "fn", "tn"))
        if self.num_classes > 1:
            tp, fp, fn, tn = tp[:, 1:], fp[:, 1:], fn[:, 1:], tn[:, 1:]
        results = {
            "samples": torch.tensor(float(tp.shape[0])),
            "dice": smp.metrics.f1_score(tp, fp, fn, tn, reduction="macro-imagewise", zero_division=1.0),
            "iou": smp.metrics.iou_score(tp, fp, fn, tn, reduction="macro-imagewise", zero_division=1.0),
            "dice_dataset": empty_is_perfect(smp.metrics.f1_score(tp, fp, fn, tn, reduction="micro")),
            "iou_dataset": empty_is_perfect(smp.metrics.iou_score(tp, fp, fn, tn, reduction="micro")),
        }
        if self.num_classes > 1:
            per_class_dice = smp.metrics.f1_score(tp.sum(0), fp.sum(0), fn.sum(0), tn.sum(0), zero_division=1.0)
            per_class_iou = smp.metrics.iou_score(tp.sum(0), fp.sum(0), fn.sum(0), tn.sum(0), zero_division=1.0)
            for index, name in enumerate(self.class_names[1:]):
                results[f"dice/{name}"] = per_class_dice[index]
                results[f"iou/{name}"] = per_class_iou[index]
        return results


def empty_is_perfect(score: torch.Tensor) -> torch.Tensor:
    """0/0 (nothing true, nothing predicted) scores 1; smp ignores `zero_division` for micro reduction."""
    return torch.nan_to_num(score, nan=1.0)


def overlap_counts(
    logits: torch.Tensor, mask: torch.Tensor, num_classes: int, ignore_index: int | None, threshold: float
) -> tuple[torch.Tensor, ...]:
    """Per-image, per-class tp/fp/fn/tn (each N x C) from smp; binary data gives C = 1."""
    if num_classes == 1:
        predicted = (torch.sigmoid(logits[:, 0].float()) > threshold).long()
        if ignore_index is None:
            # smp's binary mode reads dim 1 as the class axis: give it (N, 1, H, W).
            return smp.metrics.get_stats(predicted[:, None], mask.long()[:, None], mode="binary")
        # smp's binary mode has no ignore_index; as two classes, class 1 is the foreground.
        counts = smp.metrics.get_stats(
            predicted, mask.long(), mode="multiclass", num_classes=2, ignore_index=ignore_index
        )
        return tuple(c[:, 1:].to(logits.device) for c in counts)
    predicted = logits.argmax(dim=1)
    counts = smp.metrics.get_stats(
        predicted, mask.long(), mode="multiclass", num_classes=num_classes, ignore_index=ignore_index
    )
    return tuple(c.to(logits.device) for c in counts)
