"""Training augmentation: torchvision's transforms.v2 listed in `data.augment`, applied to an image and its target
(a `tv_tensors.Mask`, `tv_tensors.KeyPoints`) in one call, so the target moves with the image by construction.

Each entry is a `_target_` (checked against the transform's signature before any work) drawn from torch's
generator, which the training loader seeds per sample.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torchvision.transforms import v2

from vigil.core.errors import ConfigError

FLIPS = (v2.RandomHorizontalFlip, v2.RandomVerticalFlip)


def augmentation_pipeline(transforms: Iterable[Any] | None) -> v2.Compose | None:
    """The transforms of `data.augment` in order as one `v2.Compose`; None when the list is empty."""
    transforms = list(transforms or [])
    for index, transform in enumerate(transforms):
        if not isinstance(transform, v2.Transform):
            raise ConfigError(
                f"data.augment[{index}] is {type(transform).__name__}, not a torchvision transforms.v2 transform "
                "(give a _target_ such as torchvision.transforms.v2.RandomHorizontalFlip)"
            )
    return v2.Compose(transforms) if transforms else None
