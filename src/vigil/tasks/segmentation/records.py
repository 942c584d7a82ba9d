"""The record types of segmentation data: what the reader produces and the audit, masking and module read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from vigil.core.batch import Batch, meta, model_input, target
from vigil.core.files import IMAGENET, Normalization

MaskEncoding = Literal["threshold", "index"]


@dataclass(frozen=True)
class SegmentationRecord:
    """One image, its mask file (None when unannotated) and whether it was annotated at all."""

    name: str
    image_path: Path
    mask_path: Path | None
    annotated: bool


@dataclass(frozen=True)
class MaskFacts:
    """What the scan learned about one record's mask, for the audit."""

    name: str
    annotated: bool
    foreground_fraction: float
    non_binary_fraction: float
    ignored_fraction: float


@dataclass(frozen=True)
class MaskSpec:
    """How mask files encode labels."""

    num_classes: int
    encoding: MaskEncoding
    threshold: int
    ignore_index: int | None

    def label_set(self) -> set[int]:
        """The values an index mask may contain."""
        labels = set(range(max(self.num_classes, 2)))
        return labels | ({self.ignore_index} if self.ignore_index is not None else set())

    def decode(self, raw: np.ndarray) -> np.ndarray:
        """Raw mask pixels to class indices (binary: 0/1)."""
        if self.encoding == "threshold":
            return (raw > self.threshold).astype(np.int64)
        return raw.astype(np.int64)


@dataclass(frozen=True)
class SegmentationContext:
    """What the module needs from the data: the names of its test sets when there are several (else empty), and
    the input normalisation (to draw images back)."""

    test_sources: list[str]
    normalization: Normalization = IMAGENET


@dataclass
class SegmentationBatch(Batch):
    """A batch: `image` goes to the model; `mask` and `annotated` to loss and metrics; `name` is bookkeeping.

    `full_mask`, in evaluation batches scored at the original resolution, is each mask at its image's own size.
    """

    image_fields = ("image",)

    image: torch.Tensor = model_input()
    mask: torch.Tensor = target()
    annotated: torch.Tensor = target()
    name: list[str] = meta()
    full_mask: list[torch.Tensor] | None = target(default=None)

    def __len__(self) -> int:
        return self.image.shape[0]
