"""Augmentation from torchvision's transforms.v2: for every transform a preset lists, a marker drawn in the image
and in the target (a mask square, a keypoint) ends up in the same place after the transform."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from vigil.core.augmentation import augmentation_pipeline
from vigil.core.errors import ConfigError
from vigil.core.files import denormalize
from vigil.tasks.cape.data import CapeDataModule
from vigil.tasks.cape.episodes import crop_view
from vigil.tasks.cape.records import Instance
from vigil.tasks.segmentation.data import augmented

CONF = Path(__file__).resolve().parents[1] / "conf"
SEEDS = range(8)


def listed_transforms(*overrides: str) -> list[v2.Transform]:
    """The transforms `data.augment` of a composition instantiates, in order."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    return list(instantiate(cfg.data.augment))


SEGMENTATION = listed_transforms("experiment=kvasir_seg", "data.root=/d")
CAPE = listed_transforms("experiment=mp100", "data.root=/d")


def square_scene() -> tuple[torch.Tensor, torch.Tensor]:
    """A black 48 x 64 image with a white square off the centre, and its mask."""
    pixels, mask = torch.zeros(3, 48, 64), torch.zeros(48, 64, dtype=torch.long)
    pixels[:, 8:20, 10:26] = 1.0
    mask[8:20, 10:26] = 1
    return pixels, mask


@pytest.mark.parametrize("transform", [*SEGMENTATION, v2.Compose(SEGMENTATION)], ids=lambda t: type(t).__name__)
def test_segmentation_mask_moves_with_its_image(transform: v2.Transform):
    pixels, mask = square_scene()
    moved_any = False
    for seed in SEEDS:
        torch.manual_seed(seed)
        image, moved = augmented(v2.Compose([transform]), pixels, mask, ignore_index=None)
        marker = image.mean(0) > (image.mean(0).max() + image.mean(0).min()) / 2
        overlap = (marker & (moved == 1)).sum() / (marker | (moved == 1)).sum()
        assert overlap > 0.9, f"seed {seed}: the mask left its marker (IoU {overlap:.2f})"
        moved_any |= not torch.equal(moved, mask)
    assert moved_any or isinstance(transform, v2.ColorJitter), "a geometric transform never moved the marker"


def test_a_pil_image_moves_with_its_mask_and_comes_back_a_pil_image():
    pixels, mask = square_scene()
    image = Image.fromarray((pixels.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    for seed in SEEDS:
        torch.manual_seed(seed)
        moved_image, moved = augmented(v2.Compose(SEGMENTATION), image, mask, ignore_index=None)
        assert isinstance(moved_image, Image.Image) and moved_image.size == image.size
        grey = torch.from_numpy(np.asarray(moved_image, np.float32).mean(-1))
        marker = grey > (grey.max() + grey.min()) / 2
        overlap = (marker & (moved == 1)).sum() / (marker | (moved == 1)).sum()
        assert overlap > 0.9, f"seed {seed}: the mask left its marker (IoU {overlap:.2f})"


def test_a_pil_images_mask_is_resampled_exactly_as_the_image():
    # The image is its own mask (class c drawn as grey 100 c); nearest-neighbour moves must agree pixel for pixel.
    mask = torch.zeros(60, 70, dtype=torch.long)
    mask[10:40, 8:50], mask[42:55, 30:36] = 1, 2
    image = Image.fromarray(np.repeat((mask.numpy() * 100).astype(np.uint8)[..., None], 3, axis=2))
    moves = v2.Compose([v2.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.75, 1.25)), v2.RandomRotation(20)])
    for seed in SEEDS:
        torch.manual_seed(seed)
        moved_image, moved = augmented(moves, image, mask, ignore_index=None)
        assert moved.dtype == torch.long and moved.shape == mask.shape
        assert torch.equal(torch.from_numpy(np.asarray(moved_image)[..., 0] // 100).long(), moved), f"seed {seed}"


def test_a_mask_beyond_eight_bits_takes_the_tensor_kernel():
    mask = torch.zeros(30, 40, dtype=torch.long)
    mask[5:20, 5:30] = 300
    image = Image.fromarray(np.zeros((30, 40, 3), np.uint8))
    torch.manual_seed(0)
    _, moved = augmented(v2.Compose([v2.RandomAffine(degrees=(30, 30))]), image, mask, ignore_index=None)
    expected = v2.functional.affine(tv_tensors.Mask(mask), 30.0, [0, 0], 1.0, [0.0, 0.0])
    assert torch.equal(moved, expected.as_subclass(torch.Tensor))


def test_pixels_brought_in_by_a_transform_are_ignored_when_the_data_has_an_ignore_index():
    pixels, mask = square_scene()
    torch.manual_seed(0)
    _, moved = augmented(v2.Compose([v2.RandomAffine(degrees=(40, 40))]), pixels, mask, ignore_index=255)
    assert (moved == 255).any() and set(moved.unique().tolist()) == {0, 1, 255}


def blob_scene(centre: tuple[float, float]) -> Image.Image:
    """A 96 x 80 image, dark but for a Gaussian blob whose centre is `centre` (x, y; pixel edges at integers)."""
    ys, xs = np.mgrid[0:80, 0:96] + 0.5
    blob = np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * 2.5**2))
    return Image.fromarray(np.repeat((blob * 255).astype(np.uint8)[..., None], 3, axis=2))


@pytest.mark.parametrize("transform", [*CAPE, v2.Compose(CAPE)], ids=lambda t: type(t).__name__)
def test_cape_keypoint_moves_with_its_image(transform: v2.Transform):
    centre = (40.0, 35.0)
    instance = Instance(1, 1, Path("x.jpg"), (20.0, 15.0, 50.0, 45.0), np.array([centre]), np.array([2]))
    for seed in SEEDS:
        torch.manual_seed(seed)
        view = crop_view(blob_scene(centre), instance, 64, 1.25, v2.Compose([transform]))
        brightness = denormalize(view.image).mean(0)
        weights = torch.where(brightness > brightness.max() / 2, brightness, 0)
        ys, xs = torch.meshgrid(torch.arange(64.0) + 0.5, torch.arange(64.0) + 0.5, indexing="ij")
        found = torch.stack([(weights * xs).sum(), (weights * ys).sum()]) / weights.sum()
        assert torch.allclose(found, view.keypoints[0] * 64, atol=0.3), f"seed {seed}: {found} vs {view.keypoints}"


def test_cape_rejects_flips_mp100_declares_no_left_right_pairs(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"data\.augment has a flip"):
        CapeDataModule(str(tmp_path), augment=[v2.RandomHorizontalFlip()])


def test_an_entry_that_is_not_a_v2_transform_is_one_config_line():
    with pytest.raises(ConfigError, match=r"data.augment\[1\] is str"):
        augmentation_pipeline([v2.RandomVerticalFlip(), "flip"])
