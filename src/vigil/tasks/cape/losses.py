"""CAPE losses: `loss(output, target_keypoints, weight)`, a mean over the keypoints the masking counts.

`weight` (B x K) is the masking strategy's; the sum of weighted per-keypoint losses is divided by the number of
counted keypoints (the sum of the weights), not by B x K, so padding and unlabelled keypoints neither pull the
prediction nor dilute the mean. A batch where nothing counts gives a zero loss that still backpropagates.
The per-keypoint terms are torch's (L1, KL divergence); the weighting and the Gaussian targets are ours because
torch's reductions cannot take a per-keypoint weight and a count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vigil.tasks.cape.model import CapeOutput, cell_centres


def weighted_mean(per_keypoint: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Sum of `per_keypoint * weight` over B x K, divided by the number of counted keypoints (at least 1)."""
    return (per_keypoint * weight).sum() / weight.sum().clamp_min(1.0)


class L1KeypointLoss(nn.Module):
    """L1 distance between predicted and true keypoints, in crop-normalised coordinates (x and y summed)."""

    def forward(self, output: CapeOutput, target_keypoints: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The weighted mean L1 distance over the counted keypoints."""
        return weighted_mean((output.keypoints - target_keypoints).abs().sum(dim=-1), weight)


class HeatmapLoss(nn.Module):
    """KL divergence from a Gaussian target at the true keypoint (sigma in cells) to each heatmap's softmax: the
    cross-entropy less the target's own entropy, so a heatmap equal to its target scores 0.

    The target is normalised over the map in log space, so a keypoint outside the crop still has a well-defined
    target (its mass sits on the nearest border cells).
    """

    def __init__(self, sigma: float = 1.0) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, output: CapeOutput, target_keypoints: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The weighted mean KL divergence over the counted keypoints."""
        height, width = output.heatmaps.shape[-2:]
        targets = gaussian_targets(target_keypoints, height, width, self.sigma)
        log_probabilities = output.heatmaps.flatten(2).log_softmax(dim=-1)
        per_keypoint = F.kl_div(log_probabilities, targets, reduction="none").sum(dim=-1)
        return weighted_mean(per_keypoint, weight)


def gaussian_targets(keypoints: torch.Tensor, height: int, width: int, sigma: float) -> torch.Tensor:
    """B x K x (h*w) target distributions: a Gaussian of `sigma` cells around each keypoint, summing to 1."""
    centres = cell_centres(height, width, keypoints.device)
    scale = torch.tensor([width, height], device=keypoints.device, dtype=keypoints.dtype)
    squared = (((keypoints.unsqueeze(2) - centres) * scale) ** 2).sum(dim=-1)
    return (-squared / (2 * sigma**2)).softmax(dim=-1)


class L1HeatmapLoss(nn.Module):
    """`l1_weight` x L1 on the coordinates + `heatmap_weight` x the heatmap KL divergence."""

    def __init__(self, l1_weight: float = 1.0, heatmap_weight: float = 0.1, sigma: float = 1.0) -> None:
        super().__init__()
        self.l1_weight = l1_weight
        self.heatmap_weight = heatmap_weight
        self.l1 = L1KeypointLoss()
        self.heatmap = HeatmapLoss(sigma)

    def forward(self, output: CapeOutput, target_keypoints: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The weighted sum of the two losses."""
        return self.l1_weight * self.l1(output, target_keypoints, weight) + self.heatmap_weight * self.heatmap(
            output, target_keypoints, weight
        )
