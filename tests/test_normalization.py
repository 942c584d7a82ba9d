"""Inputs normalised with the pretrained encoder's own statistics (smp's and timm's settings), not always ImageNet's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from vigil.core.files import IMAGENET, Normalization, denormalize, image_input, normalize, timm_normalization
from vigil.tasks.cape.data import CapeDataModule
from vigil.tasks.segmentation.data import SegmentationDataModule
from vigil.tasks.segmentation.model import encoder_normalization
from vigil.tasks.segmentation.synthetic import SyntheticSegmentation


def test_timm_encoders_bring_their_pretrained_statistics():
    # inception_v3's pretrained config uses mean 0.5 / std 0.5, unlike ImageNet's.
    expected = timm.get_pretrained_cfg("inception_v3")
    normalization = encoder_normalization("tu-inception_v3", "imagenet")
    assert normalization.mean == tuple(expected.mean) == (0.5, 0.5, 0.5) and normalization.std == tuple(expected.std)
    assert encoder_normalization("resnet34", None) == IMAGENET, "random weights expect nothing: the default stays"
    assert timm_normalization("resnet18") == IMAGENET


def test_input_range_and_statistics_are_applied_and_undone():
    pixels = torch.rand(3, 4, 5)
    normalization = Normalization((0.5, 0.4, 0.3), (0.2, 0.25, 0.5), (0.0, 255.0))
    expected = (pixels * 255 - torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1)) / torch.tensor([0.2, 0.25, 0.5]).view(
        3, 1, 1
    )
    assert torch.allclose(normalize(pixels, normalization), expected)
    assert torch.allclose(denormalize(normalize(pixels, normalization), normalization), pixels, atol=1e-5)


@pytest.mark.parametrize("normalization", [IMAGENET, Normalization((0.5, 0.4, 0.3), (0.2, 0.25, 0.5), (0.0, 255.0))])
def test_an_eight_bit_image_becomes_the_normalised_input_in_one_step(normalization: Normalization):
    pixels = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    expected = normalize(torch.from_numpy(pixels).permute(2, 0, 1).float() / 255, normalization)
    result = image_input(Image.fromarray(pixels), normalization)
    assert result.dtype == torch.float32 and result.is_contiguous()
    assert torch.allclose(result, expected, atol=1e-4 * float(expected.abs().max()))


def test_segmentation_samples_use_the_encoders_statistics(tmp_path: Path):
    SyntheticSegmentation(num_images=10, image_size=16, unannotated_fraction=0.0, seed=0).write(tmp_path)
    options = {"image_size": (16, 16), "augment": []}
    timm_module = SegmentationDataModule(
        str(tmp_path), encoder="tu-inception_v3", encoder_weights="imagenet", **options
    )
    default = SegmentationDataModule(str(tmp_path), **options)
    first, reference = timm_module.dataset("val")[0]["image"], default.dataset("val")[0]["image"]
    pixels = denormalize(reference)
    assert torch.allclose(first, (pixels - 0.5) / 0.5, atol=1e-5)
    assert timm_module.context().normalization.mean == (0.5, 0.5, 0.5)


def test_cape_crops_use_the_backbones_statistics(tmp_path: Path):
    module = CapeDataModule(str(tmp_path), backbone="inception_v3")
    assert module.normalization.mean == (0.5, 0.5, 0.5)
    assert CapeDataModule(str(tmp_path), backbone="resnet18").normalization == IMAGENET


@pytest.mark.parametrize("value", [0, 128, 255])
def test_a_grey_level_round_trips_through_a_picture(value: int):
    image = torch.from_numpy(np.full((3, 2, 2), value / 255, np.float32))
    normalization = timm_normalization("inception_v3")
    back = (denormalize(normalize(image, normalization), normalization) * 255).round().byte()
    assert back.unique().tolist() == [value]
    assert Image.fromarray(back.permute(1, 2, 0).numpy()).getpixel((0, 0)) == (value, value, value)
