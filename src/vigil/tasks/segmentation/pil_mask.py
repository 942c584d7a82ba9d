"""A mask that a PIL image's geometric transforms move with PIL's own kernel.

torchvision's v2 transforms move a PIL image with PIL's kernels and a `tv_tensors.Mask` with its tensor kernels:
two resamplers, each with its own pixel-centre convention, and the tensor one takes ten times as long (2.9 ms
against 0.25 ms for an affine at 352 x 352, more than decoding the image). `PILMask` is a `tv_tensors.Mask` whose
affine and rotation run PIL's nearest-neighbour kernel, so a mask is resampled by the same code as its image;
every other transform treats it as the Mask it is. It is registered through torchvision's documented way to give
a custom tv_tensor its own kernels (`register_kernel`), which no library provides for masks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F


class PILMask(tv_tensors.Mask):
    """A (H, W) class-index mask whose affine and rotation are PIL's nearest-neighbour resampling."""


def through_pil(mask: PILMask, move: Any, fill: Any) -> PILMask:
    """`move` applied to the mask as an 8-bit PIL image; a mask with values outside 0..255 takes the tensor
    kernel instead (`move` given the plain Mask)."""
    values = mask.as_subclass(torch.Tensor)
    if values.ndim != 2 or values.min() < 0 or values.max() > 255:
        return tv_tensors.wrap(move(tv_tensors.Mask(values), fill=fill).as_subclass(torch.Tensor), like=mask)
    image = Image.fromarray(values.numpy().astype(np.uint8), mode="L")
    moved = move(image, fill=0 if fill is None else fill)
    return tv_tensors.wrap(torch.from_numpy(np.asarray(moved).astype(values.numpy().dtype)), like=mask)


@F.register_kernel(F.affine, PILMask)
def affine_pil_mask(mask: PILMask, angle: float, translate: list[float], scale: float, shear: list[float],
                    fill: Any = None, center: list[float] | None = None, **_: Any) -> PILMask:  # fmt: skip
    """PIL's nearest-neighbour affine of the mask, with the transform's parameters."""

    def move(inpt: Any, fill: Any) -> Any:
        return F.affine(inpt, angle, translate, scale, shear, InterpolationMode.NEAREST, fill, center)

    return through_pil(mask, move, fill)


@F.register_kernel(F.rotate, PILMask)
def rotate_pil_mask(mask: PILMask, angle: float, expand: bool = False, center: list[float] | None = None,
                    fill: Any = None, **_: Any) -> PILMask:  # fmt: skip
    """PIL's nearest-neighbour rotation of the mask, with the transform's parameters."""

    def move(inpt: Any, fill: Any) -> Any:
        return F.rotate(inpt, angle, InterpolationMode.NEAREST, expand, center, fill)

    return through_pil(mask, move, fill)
