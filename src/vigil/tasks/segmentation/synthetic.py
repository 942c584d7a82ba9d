"""Writes the embedded default data: polyp-like endoscopy scenes in the Kvasir-SEG folder format.

`images/<name>.jpg` and `masks/<name>.jpg` (JPEG masks with compression noise, as in Kvasir-SEG), plus
`unannotated.txt` listing images whose polyp was never annotated: they have no mask, just as real data has
samples without annotation. Some images are truly negative (no polyp) and have an empty mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class SyntheticSegmentation:
    """Parameters of the generated data set; its folder name is a hash of them."""

    name: ClassVar[str] = "synthetic_seg"

    num_images: int = 240
    image_size: int = 96
    negative_fraction: float = 0.15
    unannotated_fraction: float = 0.2
    seed: int = 0

    def write(self, root: Path) -> None:
        """Write `num_images` scenes under `root` in the Kvasir-SEG folder layout."""
        write_scenes(root, self)


def write_scenes(root: Path, spec: SyntheticSegmentation) -> None:
    """The scenes of `spec`, each image with its JPEG mask unless it is listed as unannotated."""
    rng = np.random.default_rng(spec.seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir()
    unannotated = []
    for index in range(spec.num_images):
        name = f"scene_{index:05d}"
        has_polyp = rng.random() >= spec.negative_fraction
        image, mask = draw_scene(rng, spec.image_size, has_polyp)
        Image.fromarray(image).save(root / "images" / f"{name}.jpg", quality=92)
        if has_polyp and rng.random() < spec.unannotated_fraction:
            unannotated.append(name)
            continue
        Image.fromarray(mask).save(root / "masks" / f"{name}.jpg", quality=92)
    (root / "unannotated.txt").write_text("".join(f"{name}\n" for name in unannotated))


def draw_scene(rng: np.random.Generator, size: int, has_polyp: bool) -> tuple[np.ndarray, np.ndarray]:
    """One RGB mucosa-like scene and its 0/255 mask; the polyp is a shaded, slightly redder blob."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.array([190, 95, 85], np.float32) + rng.normal(0, 12, 3)
    texture = sum(
        rng.uniform(4, 10) * np.sin(2 * np.pi * (rng.uniform(1, 4) * xx + rng.uniform(1, 4) * yy + rng.random()))
        for _ in range(4)
    )
    vignette = 1.0 - 0.45 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)
    image = (base[None, None, :] + texture[..., None]) * vignette[..., None]
    mask = np.zeros((size, size), np.uint8)
    if has_polyp:
        cy, cx = rng.uniform(0.25, 0.75, 2)
        ry, rx = rng.uniform(0.1, 0.22, 2)
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
        radius = np.sqrt(u**2 + v**2)
        inside = radius <= 1.0
        shade = np.clip(1.15 - 0.35 * radius - 0.25 * (u + v) / 2, 0.6, 1.3)
        polyp = np.array([215, 80, 70], np.float32) + rng.normal(0, 10, 3)
        blend = np.clip((1.0 - radius) * 6, 0, 1)[..., None]
        image = image * (1 - blend) + (polyp[None, None, :] * shade[..., None]) * blend
        mask[inside] = 255
    for _ in range(rng.integers(1, 4)):
        sy, sx = rng.uniform(0.1, 0.9, 2)
        glare = np.exp(-(((yy - sy) ** 2 + (xx - sx) ** 2) / (2 * 0.015**2)))
        image = image + 120 * glare[..., None]
    image = image + rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask
