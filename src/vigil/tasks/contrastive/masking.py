"""Masking strategies: which image-caption pairs of a batch are positives.

Written here because no library decides this: OpenCLIP's loss assumes the diagonal, and whether two captions
describe the same image is a fact about the data (its image ids), not about the loss.
"""

from __future__ import annotations

from typing import Protocol

import torch


class ContrastiveMasking(Protocol):
    """What the module, the audit and the health statistics call: image and caption ids to positives."""

    def __call__(self, image_ids: torch.Tensor, caption_ids: torch.Tensor) -> torch.Tensor:
        """Boolean (images x captions) matrix: True where the caption is a positive of the image."""


class SameImageMasking:
    """Default: a pair is positive when caption and image share an image id, so captions of one image are all
    positives of it (and of its other copies in the batch), wherever they sit."""

    def __call__(self, image_ids: torch.Tensor, caption_ids: torch.Tensor) -> torch.Tensor:
        """Boolean (images x captions) matrix of positives."""
        return image_ids[:, None] == caption_ids[None, :]


class DiagonalMasking:
    """The naive behaviour, kept for ablation: only the caption paired with an image (same position) is positive;
    another caption of the same image in the batch is a negative."""

    def __call__(self, image_ids: torch.Tensor, caption_ids: torch.Tensor) -> torch.Tensor:
        """Boolean identity matrix; needs a batch of pairs (as many images as captions)."""
        if image_ids.shape != caption_ids.shape:
            raise ValueError(
                f"masking=diagonal needs pairs, got {image_ids.numel()} images and {caption_ids.numel()} captions"
            )
        return torch.eye(image_ids.numel(), dtype=torch.bool, device=image_ids.device)
