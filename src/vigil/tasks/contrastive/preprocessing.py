"""Image preprocessing that follows the model: size, mean/std and interpolation from its checkpoint.

A timm tower gives them through `timm.data.resolve_data_config`; a joint checkpoint (CLIP, SigLIP) through its
processor's image processor, which also preprocesses the evaluation images itself, exactly as the checkpoint's
published numbers were computed. Training augments with timm's transform built from the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

from vigil.core.errors import ConfigError

# PIL's resampling filters by number, as transformers' image processors store them, named as timm names them.
PIL_INTERPOLATION = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


@dataclass(frozen=True)
class ImagePreprocessing:
    """What a model expects of its input images: (height, width), channel statistics, the resize filter."""

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str

    def transform(self, training: bool) -> Any:
        """timm's transform: for training a crop keeping 90% or more of the image and no flips (captions say
        left and right), as OpenCLIP does; for evaluation the resized image with nothing cropped off."""
        return create_transform(
            self.size,
            is_training=training,
            scale=(0.9, 1.0),
            hflip=0.0,
            color_jitter=None,
            crop_pct=1.0,
            interpolation=self.interpolation,
            mean=self.mean,
            std=self.std,
        )


def timm_preprocessing(image_model: str, image_size: int | None) -> ImagePreprocessing:
    """The timm model's data config (its pretrained tag's statistics and filter); `image_size` overrides its
    input size, as a ViT built at another size (`img_size`) needs."""
    config = resolve_data_config(pretrained_cfg=timm.get_pretrained_cfg(image_model).to_dict())
    _, height, width = config["input_size"]
    size = (image_size, image_size) if image_size else (height, width)
    return ImagePreprocessing(size, tuple(config["mean"]), tuple(config["std"]), config["interpolation"])


def processor_preprocessing(image_processor: Any, image_size: int | None, checkpoint: str) -> ImagePreprocessing:
    """The numbers of a transformers image processor (CLIP's, SigLIP's); `image_size`, when given, must agree."""
    crop = image_processor.crop_size if getattr(image_processor, "do_center_crop", False) else image_processor.size
    height = crop.get("height") or crop.get("shortest_edge")
    width = crop.get("width") or crop.get("shortest_edge")
    if image_size and (image_size, image_size) != (height, width):
        raise ConfigError(
            f"data.image_size={image_size}, but {checkpoint} takes {height}x{width} images: "
            "set data.image_size=null to use the checkpoint's size"
        )
    resample = image_processor.resample
    interpolation = getattr(resample, "value", resample)
    name = PIL_INTERPOLATION.get(interpolation, interpolation)
    return ImagePreprocessing(
        (height, width), tuple(image_processor.image_mean), tuple(image_processor.image_std), str(name)
    )


class ProcessorTransform:
    """The checkpoint's own image processor on one image: the evaluation preprocessing of a joint checkpoint."""

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
