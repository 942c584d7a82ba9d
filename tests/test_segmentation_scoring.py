"""Segmentation scored as PraNet's test script scores it: the prediction upsampled to each ground truth's own size.

The reference below is independent of the module: its own bilinear upsampling (half-pixel centres, the rule of
PraNet's `F.upsample(..., mode="bilinear", align_corners=False)`) and its own per-image Dice and IoU.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from PIL import Image

from vigil.tasks.segmentation.data import SegmentationDataModule, collate_segmentation
from vigil.tasks.segmentation.losses import bce
from vigil.tasks.segmentation.masking import AnnotatedOnlyMasking
from vigil.tasks.segmentation.model import SegmentationModel
from vigil.tasks.segmentation.module import SegmentationModule

SIZES = [(40, 30), (57, 23), (64, 64), (31, 45)]  # width x height, as PIL counts them
INPUT = (16, 16)


def write_mixed_sizes(root: Path) -> None:
    """Images of four sizes with a rectangle mask each (JPEG-free PNG masks, so the truth is exact)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for index, (width, height) in enumerate(SIZES):
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(root / f"images/{index}.png")
        mask = np.zeros((height, width), np.uint8)
        mask[height // 4 : height // 2 + 3, width // 3 : width - 2] = 255
        Image.fromarray(mask).save(root / f"masks/{index}.png")
    (root / "split.json").write_text(
        json.dumps({"train": [], "val": [], "test": [f"images/{i}.png" for i in range(len(SIZES))]})
    )


def bilinear(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Upsample a 2-D array with half-pixel centres, sources below 0 clamped to 0."""

    def taps(out: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        source = np.maximum((np.arange(out) + 0.5) * size / out - 0.5, 0.0)
        low = np.floor(source).astype(int)
        return low, np.minimum(low + 1, size - 1), source - low

    y0, y1, wy = taps(height, values.shape[0])
    x0, x1, wx = taps(width, values.shape[1])
    top = values[y0][:, x0] * (1 - wx) + values[y0][:, x1] * wx
    bottom = values[y1][:, x0] * (1 - wx) + values[y1][:, x1] * wx
    return top * (1 - wy[:, None]) + bottom * wy[:, None]


def dice_iou(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Per-image Dice and IoU; empty truth and empty prediction score 1."""
    tp = float((predicted & truth).sum())
    fp, fn = float((predicted & ~truth).sum()), float((~predicted & truth).sum())
    if tp + fp + fn == 0:
        return 1.0, 1.0
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


def scored(root: Path, resolution: str, logits: torch.Tensor) -> dict[str, float]:
    datamodule = SegmentationDataModule(
        str(root), image_size=INPUT, split_file="split.json", augment=[], score_resolution=resolution
    )
    batch = collate_segmentation(list(datamodule.dataset("test")))
    network = smp.create_model("Unet", encoder_name="resnet18", encoder_weights=None, classes=1, encoder_depth=3,
                               decoder_channels=[16, 8, 4])  # fmt: skip
    module = SegmentationModule(SegmentationModel(network), bce(1), AnnotatedOnlyMasking(), partial(torch.optim.SGD))
    module.score("test", logits, batch)
    return {name: float(value) for name, value in module.metrics["test"].compute().items()}


@pytest.fixture
def logits() -> torch.Tensor:
    """Smooth logits at the input size, positive on a blob: thresholds fall between pixels after upsampling."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, INPUT[0]), torch.linspace(-1, 1, INPUT[1]), indexing="ij")
    blob = 0.5 - ((x - 0.2) ** 2 + (y + 0.1) ** 2) * 2.0
    return torch.stack([blob + 0.1 * i for i in range(len(SIZES))])[:, None]


def test_scores_at_each_images_own_size_equal_the_independent_upsampling(tmp_path: Path, logits: torch.Tensor):
    write_mixed_sizes(tmp_path)
    result = scored(tmp_path, "original", logits)
    per_image = []
    for index, (width, height) in enumerate(SIZES):
        truth = np.asarray(Image.open(tmp_path / f"masks/{index}.png")) > 127
        probability = 1 / (1 + np.exp(-bilinear(logits[index, 0].double().numpy(), height, width)))
        per_image.append(dice_iou(probability > 0.5, truth))
    assert result["samples"] == len(SIZES)
    assert result["dice"] == pytest.approx(np.mean([d for d, _ in per_image]), abs=1e-6)
    assert result["iou"] == pytest.approx(np.mean([i for _, i in per_image]), abs=1e-6)


def test_input_resolution_scores_the_resized_masks(tmp_path: Path, logits: torch.Tensor):
    write_mixed_sizes(tmp_path)
    result = scored(tmp_path, "input", logits)
    per_image = []
    for index in range(len(SIZES)):
        mask = Image.open(tmp_path / f"masks/{index}.png").resize(INPUT[::-1], Image.NEAREST)
        per_image.append(dice_iou(torch.sigmoid(logits[index, 0]).numpy() > 0.5, np.asarray(mask) > 127))
    assert result["dice"] == pytest.approx(np.mean([d for d, _ in per_image]), abs=1e-6)
    assert result["dice"] != pytest.approx(scored(tmp_path, "original", logits)["dice"], abs=1e-3)
