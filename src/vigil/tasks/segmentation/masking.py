"""Masking strategies: which samples and pixels of a batch count in the segmentation loss.

Written here because no library decides this: smp losses take `ignore_index` for pixels, but whether a sample
without annotation is a negative (all background) or unknown is a fact about the data, not the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from vigil.tasks.segmentation.records import SegmentationBatch


@dataclass(frozen=True)
class LossTargets:
    """The logits and targets the loss sees; `mask` may hold the ignore value on excluded pixels."""

    logits: torch.Tensor
    mask: torch.Tensor


class SegmentationMasking(Protocol):
    """A masking strategy: the logits and targets of a batch that the loss may see, or None when none may."""

    def __call__(self, logits: torch.Tensor, batch: SegmentationBatch) -> LossTargets | None:
        """The counted samples' logits and masks (ignored pixels left at the ignore value)."""


class AnnotatedOnlyMasking:
    """Default: unannotated samples contribute nothing, and ignored pixels are excluded."""

    def __call__(self, logits: torch.Tensor, batch: SegmentationBatch) -> LossTargets | None:
        """Keep the annotated samples; None when the batch has none."""
        if not batch.annotated.any():
            return None
        return LossTargets(logits[batch.annotated], batch.mask[batch.annotated])


class IgnoreIndexMasking:
    """Pixel-level only: ignored pixels are excluded; every sample counts (unannotated as empty)."""

    def __call__(self, logits: torch.Tensor, batch: SegmentationBatch) -> LossTargets:
        """Every sample, with ignored pixels left at the ignore value for the loss to skip."""
        return LossTargets(logits, batch.mask)


class AllPixelsMasking:
    """The naive behaviour, kept for ablation: every sample and every pixel is labelled (ignored -> background)."""

    def __init__(self, ignore_index: int | None = None) -> None:
        self.ignore_index = ignore_index

    def __call__(self, logits: torch.Tensor, batch: SegmentationBatch) -> LossTargets:
        """Every sample; pixels carrying the ignore value are trained as background."""
        mask = batch.mask
        if self.ignore_index is not None:
            mask = torch.where(mask == self.ignore_index, torch.zeros_like(mask), mask)
        return LossTargets(logits, mask)


def trains_unannotated(masking: SegmentationMasking) -> bool:
    """Whether `masking` lets an unannotated sample into the loss (as an empty mask), found by running it."""
    probe = SegmentationBatch(
        image=torch.zeros(1, 3, 2, 2),
        mask=torch.zeros(1, 2, 2, dtype=torch.long),
        annotated=torch.zeros(1, dtype=torch.bool),
        name=["unannotated"],
    )
    targets = masking(torch.zeros(1, 1, 2, 2), probe)
    return targets is not None and targets.logits.shape[0] > 0
