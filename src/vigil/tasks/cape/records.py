"""The record types of CAPE data: what the reader produces and the episodes, audit, batches and module read.

Apart from the reader (`data.py`) so that `health.py` and `episodes.py` use them without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vigil.core.batch import Batch, meta, model_input, target
from vigil.core.files import IMAGENET, Normalization, RecordPolicy


@dataclass(frozen=True)
class Category:
    """A keypoint category: its keypoint names and its skeleton as 0-based index pairs."""

    id: int
    name: str
    keypoint_names: tuple[str, ...]
    skeleton: tuple[tuple[int, int], ...]

    @property
    def num_keypoints(self) -> int:
        """K, the length of every keypoint array of this category."""
        return len(self.keypoint_names)


@dataclass(frozen=True)
class Instance:
    """One checked annotation: image file, bbox `[x, y, w, h]`, keypoints (K x 2) and visibility (K) as read."""

    annotation_id: int
    category_id: int
    path: Path
    bbox: tuple[float, float, float, float]
    keypoints: np.ndarray
    visibility: np.ndarray


@dataclass
class SplitFile:
    """The checked content of one split file, and what the checks rejected."""

    file: Path
    categories: dict[int, Category]
    instances: list[Instance]
    policy: RecordPolicy
    instances_by_category: dict[int, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for index, instance in enumerate(self.instances):
            self.instances_by_category.setdefault(instance.category_id, []).append(index)

    @property
    def used_categories(self) -> list[int]:
        """Ids of the categories that have at least one instance in this split, sorted."""
        return sorted(self.instances_by_category)


@dataclass(frozen=True)
class CapeContext:
    """What the module needs from the data: every category's name by id, for the per-category metric names, and
    the input normalisation, to draw crops back."""

    category_names: dict[int, str]
    normalization: Normalization = IMAGENET


@dataclass
class CapeBatch(Batch):
    """Episodes: S support shots with their keypoints, one query each; K padded to the batch's largest.

    Keypoints are normalised to their crop (x, y in [0, 1)). The model gets the supports' keypoints and which of
    them are labelled, never the query's visibility: that is a target, with the query keypoints.
    """

    image_fields = ("support_images", "query_images")

    support_images: torch.Tensor = model_input()  # B x S x 3 x H x W
    support_keypoints: torch.Tensor = model_input()  # B x S x K x 2
    support_weights: torch.Tensor = model_input()  # B x S x K, 1 where labelled and inside the crop
    query_images: torch.Tensor = model_input()  # B x 3 x H x W
    keypoint_mask: torch.Tensor = model_input()  # B x K, False on padding
    query_keypoints: torch.Tensor = target()  # B x K x 2
    query_visibility: torch.Tensor = target()  # B x K, 0 / 1 / 2 (0 outside the crop): what the loss may use
    support_visibility: torch.Tensor = target()  # B x S x K, likewise
    # As annotated, wherever the keypoint falls: what evaluation scores (the MP-100 protocol ignores the crop).
    query_annotated_visibility: torch.Tensor = target()  # B x K
    support_annotated_visibility: torch.Tensor = target()  # B x S x K
    query_keypoints_original: torch.Tensor = meta()  # B x K x 2, original pixels as annotated
    query_bbox: torch.Tensor = meta()  # B x 4, [x, y, w, h] in the original image
    crop_to_original: torch.Tensor = meta()  # B x 2 x 3, normalised crop -> original pixels
    category_id: torch.Tensor = meta()
    category_name: list[str] = meta()
    skeleton: list[tuple[tuple[int, int], ...]] = meta()
    annotation_id: torch.Tensor = meta()
    support_annotation_ids: list[tuple[int, ...]] = meta()

    def __len__(self) -> int:
        """The number of episodes (one query each)."""
        return self.query_images.shape[0]
