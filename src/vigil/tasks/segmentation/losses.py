"""Segmentation losses: smp's losses behind one calling convention, `loss(logits, mask) -> scalar`.

`mask` holds class indices (N, H, W); binary logits are (N, 1, H, W), multiclass (N, C, H, W). Pixels equal to
`ignore_index` are excluded by every loss.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn


def mode_for(num_classes: int) -> str:
    """smp's mode name for a class count: 1 is binary."""
    return smp.losses.BINARY_MODE if num_classes == 1 else smp.losses.MULTICLASS_MODE


class SmpLoss(nn.Module):
    """Adapts our (logits, index mask) convention to an smp loss (binary targets as float N,1,H,W)."""

    def __init__(self, loss: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.loss = loss
        self.binary = num_classes == 1

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = mask.unsqueeze(1).to(logits.dtype) if self.binary else mask
        return self.loss(logits, target)


class MaskedPixelLoss(nn.Module):
    """A per-pixel smp loss averaged over the pixels that count.

    smp's SoftBCEWithLogitsLoss and SoftCrossEntropyLoss zero ignored pixels but still divide by all of them,
    which shrinks the loss as more pixels are ignored; we take their per-pixel values and reduce ourselves.
    """

    def __init__(self, per_pixel: nn.Module, num_classes: int, ignore_index: int | None) -> None:
        super().__init__()
        self.per_pixel = per_pixel
        self.binary = num_classes == 1
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        counted = torch.ones_like(mask, dtype=torch.bool)
        if self.ignore_index is not None:
            counted = mask != self.ignore_index
            mask = torch.where(counted, mask, torch.zeros_like(mask))
        if self.binary:
            mask, counted = mask.unsqueeze(1).to(logits.dtype), counted.unsqueeze(1)
        per_pixel = self.per_pixel(logits, mask)
        return (per_pixel * counted).sum() / counted.sum().clamp_min(1)


def bce(num_classes: int, ignore_index: int | None = None, pos_weight: float | None = None) -> nn.Module:
    """Pixel-wise binary cross-entropy (binary data); use `ce` for multiclass."""
    if num_classes != 1:
        raise ValueError(f"loss=bce is for binary data (num_classes=1), got num_classes={num_classes}; use loss=ce")
    weight = torch.tensor([pos_weight]) if pos_weight is not None else None
    per_pixel = smp.losses.SoftBCEWithLogitsLoss(ignore_index=None, reduction="none", pos_weight=weight)
    return MaskedPixelLoss(per_pixel, num_classes, ignore_index)


def ce(num_classes: int, ignore_index: int | None = None, smooth_factor: float = 0.0) -> nn.Module:
    """Pixel-wise softmax cross-entropy (multiclass data), with optional label smoothing."""
    if num_classes == 1:
        raise ValueError("loss=ce is for multiclass data (num_classes>1); use loss=bce for binary")
    per_pixel = smp.losses.SoftCrossEntropyLoss(reduction="none", smooth_factor=smooth_factor, ignore_index=None)
    return MaskedPixelLoss(per_pixel, num_classes, ignore_index)


def dice(num_classes: int, ignore_index: int | None = None, smooth: float = 0.0, log_loss: bool = False) -> nn.Module:
    """smp DiceLoss (pooled over the batch; a class empty in the whole batch adds zero)."""
    loss = smp.losses.DiceLoss(
        mode_for(num_classes), from_logits=True, ignore_index=ignore_index, smooth=smooth, log_loss=log_loss
    )
    return SmpLoss(loss, num_classes)


def focal(
    num_classes: int, ignore_index: int | None = None, alpha: float | None = None, gamma: float = 2.0
) -> nn.Module:
    """smp FocalLoss (mean over counted pixels)."""
    return SmpLoss(
        smp.losses.FocalLoss(mode_for(num_classes), alpha=alpha, gamma=gamma, ignore_index=ignore_index),
        num_classes,
    )


def tversky(
    num_classes: int,
    ignore_index: int | None = None,
    alpha: float = 0.5,
    beta: float = 0.5,
    gamma: float = 1.0,
) -> nn.Module:
    """smp TverskyLoss: alpha weighs false positives, beta false negatives."""
    loss = smp.losses.TverskyLoss(
        mode_for(num_classes),
        from_logits=True,
        ignore_index=ignore_index,
        alpha=alpha,
        beta=beta,
        gamma=gamma,
    )
    return SmpLoss(loss, num_classes)


def lovasz(num_classes: int, ignore_index: int | None = None, per_image: bool = False) -> nn.Module:
    """smp LovaszLoss, the convex surrogate of IoU."""
    loss = smp.losses.LovaszLoss(
        mode_for(num_classes), per_image=per_image, ignore_index=ignore_index, from_logits=True
    )
    return SmpLoss(loss, num_classes)


class CombinedLoss(nn.Module):
    """A weighted sum of named losses; the last call's terms are kept for logging (`train/loss/<name>`)."""

    def __init__(self, losses: dict[str, nn.Module], weights: dict[str, float]) -> None:
        super().__init__()
        if set(losses) != set(weights):
            raise ValueError(f"loss=combined: weights {sorted(weights)} must name the losses {sorted(losses)}")
        self.losses = nn.ModuleDict(losses)
        self.weights = dict(weights)
        self.terms: dict[str, torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.terms = {name: loss(logits, mask) for name, loss in self.losses.items()}
        return sum(self.weights[name] * value for name, value in self.terms.items())
