"""Segmentation networks: any smp architecture and encoder, behind a forward that takes `image` by name."""

from __future__ import annotations

from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from torch import nn

from vigil.core.files import IMAGENET, Normalization, timm_normalization


def encoder_normalization(encoder: str, weights: str | None) -> Normalization:
    """The input statistics and range the encoder's pretrained weights expect: timm's config for `tu-` encoders
    (offline), smp's pretrained settings for its own (fetched with the weights); ImageNet's for random weights."""
    if weights is None:
        return IMAGENET
    if encoder.startswith("tu-"):
        return timm_normalization(encoder.removeprefix("tu-"))
    settings = smp.encoders.get_preprocessing_params(encoder, weights)
    return Normalization(tuple(settings["mean"]), tuple(settings["std"]), tuple(settings["input_range"]))


class SegmentationModel(nn.Module):
    """An smp model whose forward takes the batch's `image` field by name and returns logits (N, C, H, W)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.network(image)


def smp_model(
    arch: str = "Unet",
    encoder: str = "resnet18",
    encoder_weights: str | None = None,
    num_classes: int = 1,
    in_channels: int = 3,
    pretrained_path: str | None = None,
    **arch_kwargs: object,
) -> SegmentationModel:
    """Build `arch` with `encoder` through `smp.create_model`, or load a saved model from `pretrained_path`.

    `encoder_weights="imagenet"` downloads encoder weights from the hub on first use; `pretrained_path` is a
    folder written by `save_pretrained` (a whole smp model, e.g. fine-tuned elsewhere) and is read offline.
    """
    if pretrained_path:
        network = smp.from_pretrained(str(Path(pretrained_path)))
        out = network.segmentation_head[0].out_channels
        if out != max(num_classes, 1):
            raise ValueError(f"{pretrained_path}: model predicts {out} classes, data has num_classes={num_classes}")
        return SegmentationModel(network)
    network = smp.create_model(
        arch,
        encoder_name=encoder,
        encoder_weights=encoder_weights,
        in_channels=in_channels,
        classes=num_classes,
        **arch_kwargs,
    )
    return SegmentationModel(network)
