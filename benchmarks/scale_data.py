"""Realistic-size corpora for the scale benchmark, in the real on-disk formats at the real image sizes.

Each task's corpus is written at a fraction of the real data set's size (Kvasir-SEG 1,000 images of about
620 x 530; Flickr30k 31,783 images of about 500 x 375 with 5 captions each; MP-100 100 categories, about 18,000
instances with 8-68 keypoints; Kvasir-VQA 6,500 images and 58,849 questions). The images are textured JPEGs whose
files are about the size of the real ones (a photo-like mix of smooth colour and grain, not flat shapes that
compress to nothing). Every image is written once into a pool per task and hard-linked into each fraction's
folder, so the 10%, 30% and 100% corpora share their files. Folders are keyed by this module's source and the
parameters (`vigil.core.synthetic`), so a changed generator never serves a stale corpus.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vigil.core.synthetic import ensure_synthetic, synthetic_folder

TASKS = ("seg", "contrastive", "cape", "vqa")
# Real sizes: images, and per task what else is counted.
KVASIR_SEG_IMAGES = 1000
FLICKR_SPLITS = {"train": 29000, "val": 1014, "test": 1000, "restval": 769}
MP100_CATEGORIES, MP100_INSTANCES = 100, 18000
KVASIR_VQA_IMAGES, KVASIR_VQA_QUESTIONS = 6500, 58849
# Pixel sizes seen in each data set, cycled through.
SEG_SIZES = ((622, 529), (622, 529), (622, 529), (576, 574), (720, 576), (532, 484))
FLICKR_SIZES = ((500, 375), (500, 375), (500, 333), (375, 500), (500, 400))
MP100_SIZES = ((640, 480), (480, 640), (500, 375), (400, 400), (800, 600))
VQA_SIZES = ((622, 529), (720, 576), (720, 576), (1280, 1024))
# Grain strength per task: sets the JPEG size (about 45 kB Kvasir, 140 kB Flickr30k at quality 90).
GRAIN = {"seg": 0.4, "contrastive": 5.0, "cape": 2.0, "vqa": 0.5}
TILE = (1100, 1400)


@dataclass(frozen=True)
class ScaleCorpus:
    """One task's corpus at `fraction` of the real size; `seed` fixes every draw."""

    task: str
    fraction: float
    seed: int = 0
    name = "scale"

    def write(self, root: Path) -> None:
        """Write the corpus under `root` in the task's real format, images hard-linked from the pool."""
        pool = ImagePool(pool_folder(root.parent, self.task), self.task, self.seed)
        WRITERS[self.task](root, self.fraction, pool)


def pool_folder(cache: Path, task: str) -> Path:
    """The folder of the task's image files, shared by every fraction."""
    return synthetic_folder(cache, "scale-pool", ScaleCorpus(task, 1.0))


def corpus_root(cache: Path, task: str, fraction: float) -> Path:
    """The task's corpus at `fraction`, written under `cache` when missing; returns its data root."""
    return ensure_synthetic(cache, "scale", ScaleCorpus(task, fraction), lambda folder, spec: spec.write(folder))


class ImagePool:
    """Textured JPEGs by index, each written once (atomically) and hard-linked wherever it is needed."""

    def __init__(self, folder: Path, task: str, seed: int) -> None:
        self.folder = folder
        self.grain = GRAIN[task]
        self.seed = seed
        self.tiles: list[np.ndarray] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def link(self, index: int, size: tuple[int, int], target: Path) -> None:
        """Put image `index` of `size` at `target` (a hard link to the pool's file)."""
        source = self.folder / f"{index:06d}_{size[0]}x{size[1]}.jpg"
        if not source.exists():
            staging = source.with_suffix(f".tmp-{os.getpid()}")
            self.render(index, size).save(staging, "JPEG", quality=90)
            staging.rename(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(source, target)

    def render(self, index: int, size: tuple[int, int]) -> Image.Image:
        """A smooth random colour field, grain cropped from a fixed tile, and a few discs."""
        width, height = size
        rng = np.random.default_rng((self.seed, index))
        base = rng.integers(0, 256, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
        colour = np.asarray(Image.fromarray(base).resize((width, height), Image.BICUBIC), np.int16)
        tile = self.grain_tiles()[index % 2]
        top, left = rng.integers(0, tile.shape[0] - height), rng.integers(0, tile.shape[1] - width)
        grain = (tile[top : top + height, left : left + width] * self.grain).astype(np.int16)
        image = Image.fromarray(np.clip(colour + grain, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x, y, radius = rng.integers(0, width), rng.integers(0, height), rng.integers(20, 120)
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=tuple(rng.integers(0, 256, 3).tolist()))
        return image

    def grain_tiles(self) -> list[np.ndarray]:
        """Two blurred noise tiles (drawn once per pool) that every image crops its grain from."""
        if self.tiles is None:
            rng = np.random.default_rng(self.seed)
            noise = [np.clip(rng.normal(128, 40, (*TILE, 3)), 0, 255).astype(np.uint8) for _ in range(2)]
            blurred = [Image.fromarray(n).filter(ImageFilter.GaussianBlur(1.2)) for n in noise]
            self.tiles = [np.asarray(b, np.int16) - 128 for b in blurred]
        return self.tiles


def scaled(count: int, fraction: float, least: int = 1) -> int:
    """`count` at `fraction`, at least `least`."""
    return max(least, round(count * fraction))


def write_segmentation(root: Path, fraction: float, pool: ImagePool) -> None:
    """Kvasir-SEG: `images/*.jpg`, `masks/*.jpg` (JPEG masks, 0/255 with compression noise), `kavsir_bboxes.json`."""
    boxes = {}
    for index in range(scaled(KVASIR_SEG_IMAGES, fraction)):
        size = SEG_SIZES[index % len(SEG_SIZES)]
        name = f"cju{index:07d}"
        pool.link(index, size, root / "images" / f"{name}.jpg")
        rng = np.random.default_rng(index)
        mask = Image.new("L", size, 0)
        x, y = rng.integers(size[0] // 4, 3 * size[0] // 4), rng.integers(size[1] // 4, 3 * size[1] // 4)
        rx, ry = rng.integers(30, size[0] // 4), rng.integers(30, size[1] // 4)
        ImageDraw.Draw(mask).ellipse((x - rx, y - ry, x + rx, y + ry), fill=255)
        (root / "masks").mkdir(exist_ok=True)
        mask.save(root / "masks" / f"{name}.jpg", "JPEG", quality=90)
        box = {"label": "polyp", "xmin": int(x - rx), "ymin": int(y - ry), "xmax": int(x + rx), "ymax": int(y + ry)}
        boxes[name] = {"height": size[1], "width": size[0], "bbox": [box]}
    (root / "kavsir_bboxes.json").write_text(json.dumps(boxes))


PEOPLE = ("a man", "a woman", "two children", "a dog", "a group of people", "an old man", "a girl", "a cyclist")
ACTIONS = ("is walking along", "is sitting on", "stands next to", "runs across", "is playing near", "looks at")
PLACES = ("a busy street", "the beach", "a wooden bench", "a red building", "the snowy hill", "a small boat")
DETAILS = ("in the sun", "at night", "while smiling", "with a blue bag", "in front of a crowd", "")


def caption(rng: np.random.Generator) -> str:
    """A Flickr30k-like sentence."""
    words = [rng.choice(PEOPLE), rng.choice(ACTIONS), rng.choice(PLACES), rng.choice(DETAILS)]
    return " ".join(w for w in words if w).capitalize() + " ."


def write_contrastive(root: Path, fraction: float, pool: ImagePool) -> None:
    """Flickr30k: `dataset_flickr30k.json` (Karpathy split) and `flickr30k-images/`, 5 captions per image."""
    images, sentence_id, index = [], 0, 0
    for split, count in FLICKR_SPLITS.items():
        for _ in range(scaled(count, fraction)):
            filename = f"{1000000000 + index}.jpg"
            pool.link(index, FLICKR_SIZES[index % len(FLICKR_SIZES)], root / "flickr30k-images" / filename)
            rng = np.random.default_rng(index)
            sentences = []
            for _ in range(5):
                raw = caption(rng)
                tokens = raw.lower().rstrip(" .").split()
                sentences.append({"raw": raw, "tokens": tokens, "imgid": index, "sentid": sentence_id})
                sentence_id += 1
            sentids = [s["sentid"] for s in sentences]
            entry = {"filename": filename, "imgid": index, "split": split, "sentids": sentids, "sentences": sentences}
            images.append(entry)
            index += 1
    (root / "dataset_flickr30k.json").write_text(json.dumps({"images": images, "dataset": "flickr30k"}))


def write_cape(root: Path, fraction: float, pool: ImagePool) -> None:
    """MP-100 split 1: `annotations/mp100_split1_{train,val,test}.json` and `images/<category>/<id>.jpg`."""
    per_category = scaled(MP100_INSTANCES // MP100_CATEGORIES, fraction, least=16)
    splits = {"train": range(0, 70), "val": range(70, 80), "test": range(80, 100)}
    index = 0
    for split, categories in splits.items():
        coco: dict[str, list] = {"images": [], "annotations": [], "categories": []}
        for category in categories:
            keypoints = 8 + (category * 61) // (MP100_CATEGORIES - 1)
            coco["categories"].append(
                {
                    "id": category + 1,
                    "name": f"species_{category:03d}",
                    "supercategory": "animal",
                    "keypoints": [f"kp{k}" for k in range(keypoints)],
                    "skeleton": [[k, k + 1] for k in range(keypoints - 1)],
                }
            )
            for _ in range(per_category):
                size = MP100_SIZES[index % len(MP100_SIZES)]
                file_name = f"species_{category:03d}/{index:06d}.jpg"
                pool.link(index, size, root / "images" / file_name)
                coco["images"].append({"id": index, "file_name": file_name, "width": size[0], "height": size[1]})
                coco["annotations"].append(cape_annotation(index, category + 1, keypoints, size))
                index += 1
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"mp100_split1_{split}.json").write_text(json.dumps(coco))


def cape_annotation(index: int, category_id: int, keypoints: int, size: tuple[int, int]) -> dict:
    """One instance: a bbox inside the image and keypoints inside the bbox, a tenth unlabelled."""
    rng = np.random.default_rng(index)
    width, height = rng.uniform(0.3, 0.8) * size[0], rng.uniform(0.3, 0.8) * size[1]
    x, y = rng.uniform(0, size[0] - width), rng.uniform(0, size[1] - height)
    points = rng.uniform((x, y), (x + width, y + height), (keypoints, 2))
    visibility = np.where(rng.random(keypoints) < 0.1, 0, 2)
    triples = [
        [round(float(px), 1), round(float(py), 1), int(v)] for (px, py), v in zip(points, visibility, strict=True)
    ]
    return {
        "id": index,
        "image_id": index,
        "category_id": category_id,
        "bbox": [round(x, 1), round(y, 1), round(width, 1), round(height, 1)],
        "keypoints": [value for triple in triples for value in triple],
        "num_keypoints": int((visibility > 0).sum()),
        "area": round(width * height, 1),
        "iscrowd": 0,
    }


COLOURS = ("pink", "red", "white", "yellow", "orange", "purple", "brown", "black", "grey", "green", "blue", "beige")
PLACES_IN_IMAGE = ("center", "center-left", "center-right", "upper-left", "upper-center", "upper-right")
PLACES_IN_IMAGE += ("lower-left", "lower-center", "lower-right")
FINDINGS = ("polyp", "oesophagitis", "ulcerative colitis", "barrett's", "haemorrhoids", "short-segment barrett's")
FINDINGS += ("ulcer", "bleeding", "erosion", "tumour")
INSTRUMENTS = ("biopsy forceps", "metal clip", "polyp snare", "injection needle", "tube")
LANDMARKS = ("cecum", "pylorus", "z-line", "ileum")


def several(rng: np.random.Generator, values: tuple[str, ...]) -> str:
    """One to three values, the first ones likelier (real multi-value answers are skewed), comma-joined."""
    weights = 1.0 / np.arange(1, len(values) + 1)
    picked = rng.choice(len(values), size=rng.integers(1, 4), replace=False, p=weights / weights.sum())
    return ", ".join(values[i] for i in sorted(picked))


VQA_QUESTIONS: tuple[tuple[str, Callable[[np.random.Generator], str]], ...] = (
    ("Are there any abnormalities in the image? Check all that are present.", lambda r: several(r, FINDINGS)),
    ("Are there any anatomical landmarks in the image?", lambda r: several(r, LANDMARKS)),
    ("Are there any instruments in the image? Check all that are present.", lambda r: several(r, INSTRUMENTS)),
    ("Have all polyps been removed?", lambda r: str(r.choice(("yes", "no", "not relevant")))),
    ("Is this finding easy to detect?", lambda r: str(r.choice(("yes", "no")))),
    ("Is there a green/black box artefact?", lambda r: str(r.choice(("yes", "no")))),
    ("Is there text?", lambda r: str(r.choice(("yes", "no")))),
    ("What color is the abnormality? If more than one separate with ;", lambda r: several(r, COLOURS)),
    ("What color is the anatomical landmark?", lambda r: several(r, COLOURS)),
    ("Where in the image is the abnormality?", lambda r: several(r, PLACES_IN_IMAGE)),
    ("Where in the image is the instrument?", lambda r: several(r, PLACES_IN_IMAGE)),
    ("How many polyps are in the image?", lambda r: str(r.choice(4, p=(0.5, 0.3, 0.15, 0.05)))),
    ("How many instrumnets are in the image?", lambda r: str(r.choice(3, p=(0.6, 0.3, 0.1)))),
    ("What is the size of the polyp?", lambda r: str(r.choice(("< 5mm", "5-10mm", "11-20mm", ">20mm")))),
    ("What type of procedure is the image taken from?", lambda r: str(r.choice(("colonoscopy", "gastroscopy")))),
    ("What type of polyp is present?", lambda r: str(r.choice(("paris ip", "paris is", "paris iia", "none")))),
)


def write_vqa(root: Path, fraction: float, pool: ImagePool) -> None:
    """Kvasir-VQA: the table `kvasir_vqa.csv` (img_id, question, answer, source) and `images/<img_id>.jpg`."""
    images = scaled(KVASIR_VQA_IMAGES, fraction)
    questions = scaled(KVASIR_VQA_QUESTIONS, fraction)
    rng = np.random.default_rng(0)
    with (root / "kvasir_vqa.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["img_id", "question", "answer", "source"])
        for index in range(images):
            img_id = f"cl8k2u1{index:06d}"
            pool.link(index, VQA_SIZES[index % len(VQA_SIZES)], root / "images" / f"{img_id}.jpg")
            # Each image gets its share of the questions, a different subset of the templates each.
            count = questions // images + (index < questions % images)
            for number in rng.choice(len(VQA_QUESTIONS), size=min(count, len(VQA_QUESTIONS)), replace=False):
                question, answer = VQA_QUESTIONS[number]
                writer.writerow([img_id, question, answer(rng), "hyperkvasir"])


WRITERS: dict[str, Callable[[Path, float, ImagePool], None]] = {
    "seg": write_segmentation,
    "contrastive": write_contrastive,
    "cape": write_cape,
    "vqa": write_vqa,
}
