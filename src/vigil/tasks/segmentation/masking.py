"""Masking strategies: which samples and pixels of a batch count in the segmentation loss.

Written here because no library decides this: smp losses take `ignore_index` for pixels, but whether a sample
without annotation is a negative (all background) or unknown is a fact about the data, not the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vigil.tasks.segmentation.data import SegmentationBatch


@dataclass(frozen=True)
class LossTargets:
    """The logits and targets the loss sees; `mask` may hold the ignore value on excluded pixels."""

    logits: torch.Tensor
    mask: torch.Tensor


class AnnotatedOnly:
    """Default: unannotated samples contribute nothing, and ignored pixels are excluded."""

    trains_unannotated = False

    def __call__(self, logits: torch.Tensor, batch: SegmentationBatch) -> LossTargets | None:
        """Keep the annotated samples; None when the batch has none."""
        if not batch.annotated.any():
            return None
        return LossTargets(logits[batch.annotated], batch.mask[batch.annotated])


class IgnoreIndex:
    """Pixel-level only: ignored pixels are excluded; every sample counts (unannotated as empty)."""

    trains_unannotated = True

    def __call__(self, logits: torch.Tensor, batch: SegmentationBatch) -> LossTargets:
        """Every sample, with ignored pixels left at the ignore value for the loss to skip."""
        return LossTargets(logits, batch.mask)


class AllPixels:
    """The naive behaviour, kept for ablation: every sample and every pixel is labelled (ignored -> background)."""

    trains_unannotated = True

    def __init__(self, ignore_index: int | None = None) -> None:
        self.ignore_index = ignore_index

    def __call__(self, logits: torch.Tensor, batch: SegmentationBatch) -> LossTargets:
        """Every sample; pixels carrying the ignore value are trained as background."""
        mask = batch.mask
        if self.ignore_index is not None:
            mask = torch.where(mask == self.ignore_index, torch.zeros_like(mask), mask)
        return LossTargets(logits, mask)
