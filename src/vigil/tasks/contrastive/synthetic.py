"""Writes the embedded default data: scenes of one coloured shape, five captions each, as Flickr30k Karpathy JSON.

`dataset_flickr30k.json` and `flickr30k-images/<name>.png`, read back by the same loader as the real data. Every
scene is a different combination of colour, shape, size and position (while combinations last), and each of its
five captions names all four in its own words, so retrieval is learnable from scratch in a minute on a CPU.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image, ImageDraw

ANNOTATION_FILE = "dataset_flickr30k.json"
IMAGE_DIR = "flickr30k-images"

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "white": (240, 240, 240),
}
SHAPES = {"circle": ["circle", "disk"], "square": ["square", "box"], "triangle": ["triangle"], "cross": ["cross"]}
SIZES = {"small": ["small", "little", "tiny"], "large": ["large", "big", "huge"]}
# 3 x 3 grid cells: (row, column) -> the phrases a caption may use for it.
POSITIONS = {
    (0, 0): ["in the top left", "at the top left", "in the upper left corner"],
    (0, 1): ["at the top", "in the top middle", "near the top edge"],
    (0, 2): ["in the top right", "at the top right", "in the upper right corner"],
    (1, 0): ["on the left", "at the left side", "in the middle of the left edge"],
    (1, 1): ["in the center", "in the middle", "at the centre"],
    (1, 2): ["on the right", "at the right side", "in the middle of the right edge"],
    (2, 0): ["in the bottom left", "at the bottom left", "in the lower left corner"],
    (2, 1): ["at the bottom", "in the bottom middle", "near the bottom edge"],
    (2, 2): ["in the bottom right", "at the bottom right", "in the lower right corner"],
}
TEMPLATES = (
    "a {size} {colour} {shape} {position}",
    "{position} there is a {size} {colour} {shape}",
    "a {colour} {shape}, {size}, {position}",
    "one {size} {shape} in {colour} {position}",
    "the picture shows a {size} {colour} {shape} {position} on a dark background",
)


@dataclass(frozen=True)
class SyntheticCaptions:
    """Parameters of the generated data set; its folder name is a hash of them."""

    name: ClassVar[str] = "synthetic_captions"

    num_images: int = 400
    image_size: int = 64
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0

    def write(self, root: Path) -> None:
        """Write `num_images` scenes and their Karpathy-format annotation file under `root`."""
        rng = np.random.default_rng(self.seed)
        (root / IMAGE_DIR).mkdir()
        images = []
        scenes = zip(draw_scenes(rng, self.num_images), assign_splits(rng, self), strict=True)
        for index, (scene, split) in enumerate(scenes):
            filename = f"scene_{index:05d}.png"
            Image.fromarray(render(rng, scene, self.image_size)).save(root / IMAGE_DIR / filename)
            images.append(karpathy_record(index, filename, split, describe(rng, scene)))
        (root / ANNOTATION_FILE).write_text(json.dumps({"images": images, "dataset": "flickr30k"}))


@dataclass(frozen=True)
class Scene:
    """What one image shows: the attributes its captions describe."""

    colour: str
    shape: str
    size: str
    cell: tuple[int, int]


def karpathy_record(index: int, filename: str, split: str, captions: list[str]) -> dict:
    """One image of a Karpathy split file, with its captions as `sentences` (five sentence ids per image)."""
    sentences = [
        {"raw": raw, "tokens": raw.replace(",", "").split(), "imgid": index, "sentid": 5 * index + number}
        for number, raw in enumerate(captions)
    ]
    return {
        "filename": filename,
        "imgid": index,
        "split": split,
        "sentids": [s["sentid"] for s in sentences],
        "sentences": sentences,
    }


def draw_scenes(rng: np.random.Generator, count: int) -> list[Scene]:
    """`count` scenes; every combination of attributes is used once before any repeats."""
    combinations = [
        Scene(colour, shape, size, cell)
        for colour, shape, size, cell in itertools.product(COLOURS, SHAPES, SIZES, POSITIONS)
    ]
    scenes = []
    while len(scenes) < count:
        order = rng.permutation(len(combinations))
        scenes += [combinations[i] for i in order[: count - len(scenes)]]
    return scenes


def assign_splits(rng: np.random.Generator, spec: SyntheticCaptions) -> list[str]:
    """A shuffled list of split names with the configured val and test fractions."""
    n_val = round(spec.num_images * spec.val_fraction)
    n_test = round(spec.num_images * spec.test_fraction)
    splits = ["val"] * n_val + ["test"] * n_test + ["train"] * (spec.num_images - n_val - n_test)
    return [splits[i] for i in rng.permutation(len(splits))]


def describe(rng: np.random.Generator, scene: Scene) -> list[str]:
    """Five different captions, one per template, each naming colour, shape, size and position."""
    captions = []
    for template in TEMPLATES:
        caption = template.format(
            size=rng.choice(SIZES[scene.size]),
            colour=scene.colour,
            shape=rng.choice(SHAPES[scene.shape]),
            position=rng.choice(POSITIONS[scene.cell]),
        )
        captions.append(caption[0].upper() + caption[1:])
    return captions


def render(rng: np.random.Generator, scene: Scene, size: int) -> np.ndarray:
    """The scene as an RGB array: a noisy dark background with the shape drawn in its grid cell."""
    background = rng.uniform(35, 70) + rng.normal(0, 6, (size, size, 1))
    canvas = Image.fromarray(np.clip(np.repeat(background, 3, axis=2), 0, 255).astype(np.uint8))
    radius = size * (rng.uniform(0.09, 0.13) if scene.size == "small" else rng.uniform(0.2, 0.25))
    # Cell centres at 1/6, 1/2, 5/6 of the image, jittered, kept inside the frame.
    row, column = scene.cell
    cy, cx = (np.array([row, column]) * 2 + 1) / 6 * size + rng.normal(0, size * 0.03, 2)
    cy, cx = np.clip([cy, cx], radius, size - radius)
    colour = tuple(int(c) for c in np.clip(np.array(COLOURS[scene.colour]) + rng.normal(0, 12, 3), 0, 255))
    draw = ImageDraw.Draw(canvas)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if scene.shape == "circle":
        draw.ellipse(box, fill=colour)
    elif scene.shape == "square":
        draw.rectangle(box, fill=colour)
    elif scene.shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=colour)
    else:
        bar = radius / 3
        draw.rectangle((cx - radius, cy - bar, cx + radius, cy + bar), fill=colour)
        draw.rectangle((cx - bar, cy - radius, cx + bar, cy + radius), fill=colour)
    return np.asarray(canvas)
