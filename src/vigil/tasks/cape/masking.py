"""Masking strategies: which keypoints of an episode count in the loss, as a per-keypoint weight (B x K).

Written here because no library knows the rule: a keypoint's label can be missing in the query or in a support
shot (v=0, often stored at 0,0), and padding keypoints (`keypoint_mask` False) exist only to batch categories of
different K. Padding never counts, under any strategy.
"""

from __future__ import annotations

from typing import Protocol

import torch


class CapeMasking(Protocol):
    """What the module, the loss and the audit call: the per-keypoint loss weight of a batch of episodes."""

    def __call__(
        self, query_visibility: torch.Tensor, support_visibility: torch.Tensor, keypoint_mask: torch.Tensor
    ) -> torch.Tensor:
        """Float weight B x K from the query's (B x K) and the supports' (B x S x K) visibility and the padding."""
        ...


def labelled_in_query_and_supports(
    query_visibility: torch.Tensor, support_visibility: torch.Tensor, keypoint_mask: torch.Tensor
) -> torch.Tensor:
    """Boolean B x K: labelled (v > 0) in the query and in every support shot, and not padding.

    The rule the MP-100 protocol scores with; `VisibleMasking` trains with it.
    """
    return (query_visibility > 0) & (support_visibility > 0).all(dim=1) & keypoint_mask


class VisibleMasking:
    """Default: a keypoint counts when it is labelled (v = 1 or 2) in the query and in every support shot."""

    def __call__(
        self, query_visibility: torch.Tensor, support_visibility: torch.Tensor, keypoint_mask: torch.Tensor
    ) -> torch.Tensor:
        """Float weight B x K."""
        return labelled_in_query_and_supports(query_visibility, support_visibility, keypoint_mask).float()


class VisibleOnly2Masking:
    """Only fully visible keypoints: v = 2 in the query and in every support shot (occluded ones are left out)."""

    def __call__(
        self, query_visibility: torch.Tensor, support_visibility: torch.Tensor, keypoint_mask: torch.Tensor
    ) -> torch.Tensor:
        """Float weight B x K."""
        return ((query_visibility == 2) & (support_visibility == 2).all(dim=1) & keypoint_mask).float()


class AllKeypointsMasking:
    """The naive behaviour, kept for ablation: every real keypoint counts, unlabelled ones at their stored
    (garbage) coordinates too; only padding is left out."""

    def __call__(
        self, query_visibility: torch.Tensor, support_visibility: torch.Tensor, keypoint_mask: torch.Tensor
    ) -> torch.Tensor:
        """Float weight B x K."""
        return keypoint_mask.float()
