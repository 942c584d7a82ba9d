"""Writes the embedded default data: shape "species" with keypoints, as MP-100 COCO-style JSON.

`annotations/mp100_split1_{train,val,test}.json` and `images/<category>/<id>.jpg`, read back by the same loader
as the real data. Each species is a category with its own keypoint count, template shape (a polygon or a tree),
skeleton and colour code: every keypoint is a small disc whose colour is fixed for that keypoint of that species.
Instances vary in rotation, scale, aspect, translation, joint jitter and texture. Occluders hide some keypoints:
those become occluded (v=1) or unlabelled (v=0), and a further fraction is left unlabelled although drawn.
Unlabelled keypoints are written at (0, 0), as real COCO files do. Train, val and test hold disjoint species.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image, ImageDraw

from vigil.core.errors import ConfigError
from vigil.core.files import SPLITS

# Saturated colours with channels in {0, 128, 255}, greys left out: 24 codes far apart even after JPEG.
PALETTE = np.array([c for c in itertools.product((0, 128, 255), repeat=3) if len(set(c)) > 1], dtype=np.float64)


@dataclass(frozen=True)
class SyntheticCape:
    """Parameters of the generated data set; its folder name is a hash of them."""

    name: ClassVar[str] = "synthetic_cape"

    num_categories: int = 30
    val_categories: int = 4
    test_categories: int = 8
    instances_per_category: int = 24
    image_size: int = 96
    min_keypoints: int = 4
    max_keypoints: int = 20
    # Mean number of occluders per image; a keypoint under one is occluded (v=1) or, half the time, unlabelled.
    occluders: float = 0.6
    # Share of the remaining keypoints left unlabelled (v=0, written at 0,0) although drawn.
    unlabelled_fraction: float = 0.1
    seed: int = 0

    def write(self, root: Path) -> None:
        """Write every species' instances and the three split files under `root`."""
        if self.val_categories + self.test_categories >= self.num_categories:
            raise ConfigError("data.synthetic: val_categories + test_categories must leave training categories")
        rng = np.random.default_rng(self.seed)
        species = [draw_species(rng, f"species_{index:02d}", self) for index in range(self.num_categories)]
        split_of = self.split_of(rng.permutation(self.num_categories))
        files: dict[str, dict[str, list]] = {split: {"images": [], "annotations": []} for split in SPLITS}
        for index, kind in enumerate(species):
            write_species(root, rng, index, kind, self, files[split_of[index]])
        categories = [category_entry(index + 1, kind) for index, kind in enumerate(species)]
        write_split_files(root, files, categories)

    def split_of(self, order: np.ndarray) -> dict[int, str]:
        """Species index -> split: the first `test_categories` of `order` test, the next `val_categories` val."""
        split_of = {}
        for rank, index in enumerate(order):
            if rank < self.test_categories:
                split_of[int(index)] = "test"
            elif rank < self.test_categories + self.val_categories:
                split_of[int(index)] = "val"
            else:
                split_of[int(index)] = "train"
        return split_of


@dataclass(frozen=True)
class Species:
    """One category: keypoint template in unit coordinates, skeleton, colour code, and whether it has a body."""

    name: str
    template: np.ndarray
    skeleton: tuple[tuple[int, int], ...]
    colours: np.ndarray
    filled: bool


def write_species(
    root: Path, rng: np.random.Generator, index: int, kind: Species, spec: SyntheticCape, content: dict[str, list]
) -> None:
    """Render the instances of species `index` as JPEGs, and add their images and annotations to `content`."""
    (root / "images" / kind.name).mkdir(parents=True)
    for number in range(spec.instances_per_category):
        record_id = index * spec.instances_per_category + number + 1
        image, keypoints, visibility, bbox = render_instance(rng, kind, spec)
        file_name = f"{kind.name}/{record_id:06d}.jpg"
        Image.fromarray(image).save(root / "images" / file_name, quality=95)
        content["images"].append(
            {"id": record_id, "file_name": file_name, "width": spec.image_size, "height": spec.image_size}
        )
        content["annotations"].append(annotation_entry(record_id, index + 1, keypoints, visibility, bbox))


def write_split_files(root: Path, files: dict[str, dict[str, list]], categories: list[dict[str, Any]]) -> None:
    """`annotations/mp100_split1_<split>.json`; every file lists every category, as MP-100's do."""
    (root / "annotations").mkdir()
    for split, content in files.items():
        payload = {"images": content["images"], "annotations": content["annotations"], "categories": categories}
        (root / "annotations" / f"mp100_split1_{split}.json").write_text(json.dumps(payload))


def draw_species(rng: np.random.Generator, name: str, spec: SyntheticCape) -> Species:
    """A species: polygon (closed ring, filled body) or tree (branches from a root), K keypoints."""
    count = int(rng.integers(spec.min_keypoints, spec.max_keypoints + 1))
    filled = bool(rng.random() < 0.5)
    if filled:
        angles = np.sort(rng.uniform(0, 2 * np.pi, count))
        radii = rng.uniform(0.45, 1.0, count)
        template = np.stack([np.cos(angles) * radii, np.sin(angles) * radii], axis=1)
        skeleton = tuple((i, (i + 1) % count) for i in range(count))
    else:
        template = np.zeros((count, 2))
        edges = []
        for child in range(1, count):
            parent = int(rng.integers(child))
            angle = rng.uniform(0, 2 * np.pi)
            template[child] = template[parent] + rng.uniform(0.35, 0.7) * np.array([np.cos(angle), np.sin(angle)])
            edges.append((parent, child))
        skeleton = tuple(edges)
    template = template - (template.max(0) + template.min(0)) / 2
    template = template / np.abs(template).max()
    colours = PALETTE[rng.permutation(len(PALETTE))[: min(count, len(PALETTE))]]
    if count > len(PALETTE):
        colours = np.concatenate([colours, rng.uniform(0, 255, (count - len(PALETTE), 3))])
    return Species(name, template, skeleton, colours, filled)


def category_entry(category_id: int, species: Species) -> dict:
    """The `categories[]` entry: keypoint names and the 0-based skeleton (as the CAPE reference code reads it)."""
    return {
        "id": category_id,
        "name": species.name,
        "supercategory": "shape",
        "keypoints": [f"point_{i}" for i in range(len(species.template))],
        "skeleton": [list(edge) for edge in species.skeleton],
    }


def annotation_entry(
    record_id: int, category_id: int, keypoints: np.ndarray, visibility: np.ndarray, bbox: list[float]
) -> dict:
    """The `annotations[]` entry with `keypoints` as `[x, y, v] * K`."""
    flat = []
    for (x, y), v in zip(keypoints.tolist(), visibility.tolist(), strict=True):
        flat += [round(x, 2), round(y, 2), int(v)]
    return {
        "id": record_id,
        "image_id": record_id,
        "category_id": category_id,
        "bbox": [round(value, 2) for value in bbox],
        "keypoints": flat,
        "num_keypoints": int((visibility > 0).sum()),
        "area": round(bbox[2] * bbox[3], 2),
        "iscrowd": 0,
    }


def render_instance(
    rng: np.random.Generator, species: Species, spec: SyntheticCape
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """One image of `species`: (RGB pixels, keypoints as annotated, visibility, bbox [x, y, w, h])."""
    size = spec.image_size
    points = pose(rng, species.template, size)
    canvas = Image.fromarray(texture(rng, size, amplitude=18))
    draw = ImageDraw.Draw(canvas)
    body = tuple(int(c) for c in rng.uniform(70, 200, 3))
    line = tuple(int(c) for c in rng.uniform(10, 60, 3))
    xy = [tuple(p) for p in points.tolist()]
    if species.filled:
        draw.polygon(xy, fill=body)
    for i, j in species.skeleton:
        draw.line([xy[i], xy[j]], fill=body if not species.filled else line, width=4 if not species.filled else 1)
    radius = size * 0.028
    for (x, y), colour in zip(xy, species.colours, strict=True):
        jittered = tuple(int(c) for c in np.clip(colour + rng.normal(0, 8, 3), 0, 255))
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=jittered)
    occluded = occlude(rng, canvas, points, spec)
    visibility = np.where(occluded, 1, 2)
    draws = rng.random(len(points))
    unlabelled = np.where(occluded, draws < 0.5, draws < spec.unlabelled_fraction)
    visibility[unlabelled] = 0
    annotated = np.where(visibility[:, None] > 0, points, 0.0)
    low = np.clip(points.min(0) - radius - 1, 0, size - 1)
    high = np.clip(points.max(0) + radius + 1, 1, size)
    bbox = [float(low[0]), float(low[1]), float(high[0] - low[0]), float(high[1] - low[1])]
    return np.asarray(canvas), annotated, visibility, bbox


def pose(rng: np.random.Generator, template: np.ndarray, size: int) -> np.ndarray:
    """The template under random joint jitter, aspect, rotation, scale and translation, inside the frame."""
    angle = rng.uniform(-np.pi, np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    aspect = np.exp(rng.uniform(-0.2, 0.2))
    shape = (template + rng.normal(0, 0.04, template.shape)) * np.array([aspect, 1 / aspect])
    points = shape @ rotation.T * size * rng.uniform(0.22, 0.4)
    margin = size * 0.06
    low, high = margin - points.min(0), size - margin - points.max(0)
    return points + rng.uniform(np.minimum(low, high), np.maximum(low, high))


def texture(rng: np.random.Generator, size: int, amplitude: float) -> np.ndarray:
    """A low-saturation background: a grey level, a faint tint, stripes of random frequency, pixel noise."""
    yy, xx = np.mgrid[0:size, 0:size]
    angle, frequency = rng.uniform(0, np.pi), rng.uniform(0.05, 0.4)
    stripes = amplitude * np.sin(frequency * (xx * np.cos(angle) + yy * np.sin(angle)))
    grey = rng.uniform(60, 190) + stripes + rng.normal(0, 6, (size, size))
    tint = rng.uniform(-15, 15, 3)
    return np.clip(grey[..., None] + tint, 0, 255).astype(np.uint8)


def occlude(rng: np.random.Generator, canvas: Image.Image, points: np.ndarray, spec: SyntheticCape) -> np.ndarray:
    """Paste textured rectangles near the figure; returns which keypoints they cover."""
    size = spec.image_size
    covered = np.zeros(len(points), dtype=bool)
    for _ in range(min(int(rng.poisson(spec.occluders)), 2)):
        centre = points[rng.integers(len(points))] + rng.normal(0, size * 0.05, 2)
        half = rng.uniform(0.06, 0.14, 2) * size
        corner = np.floor(centre - half).astype(int)
        patch = texture(rng, size, amplitude=25)[: int(2 * half[1]) + 1, : int(2 * half[0]) + 1]
        canvas.paste(Image.fromarray(patch), (int(corner[0]), int(corner[1])))
        covered |= np.all((points >= corner) & (points <= corner + patch.shape[1::-1]), axis=1)
    return covered
