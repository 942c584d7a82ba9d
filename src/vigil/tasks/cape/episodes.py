"""Episodes (support shots and a query of one category) and the crop that turns an instance into model input.

- Training: class-balanced episodes, redrawn every epoch from `(seed, epoch)`: a category uniformly among those
  with at least S + 1 instances, then S supports and one query, all distinct instances. The same episodes on
  every DDP rank; Lightning's sampler wrapper shards them.
- Evaluation: a fixed list, per category (sorted by id) `episodes` episodes drawn from `(seed, category)`, each
  S supports and up to Q queries, all distinct; one item per (episode, query).
- Crop: the bbox, padded by `padding` (1.25 as in the CAPE reference pipeline) to a square, resized to
  `image_size`, with an optional rotation and scale applied to the image and the keypoints by the same affine.
  A keypoint that lands outside the crop is unlabelled (v=0) for training that sample; its coordinates are kept as
  they are, and evaluation still scores it (by its annotated visibility, in original pixels).
  No flips: MP-100 files carry no left/right pairs, so a flip would swap what the keypoints mean.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from vigil.core.files import normalize, open_image
from vigil.tasks.cape.records import Category, Instance


class Episode(NamedTuple):
    """Support instances and one query instance of one category, as indices into a split's instances."""

    category_id: int
    supports: tuple[int, ...]
    query: int


@dataclass(frozen=True)
class Augmentation:
    """Random rotation (degrees, +-) and scale (+- fraction of the crop size); zero for none."""

    rotation: float = 0.0
    scale: float = 0.0


class TrainingEpisodes(Sampler[Episode]):
    """`length` class-balanced episodes per epoch, drawn afresh each epoch from `(seed, epoch)`."""

    def __init__(self, members: Mapping[int, Sequence[int]], shots: int, length: int, seed: int = 0) -> None:
        self.categories = sorted(c for c, indices in members.items() if len(indices) >= shots + 1)
        self.members = {c: list(members[c]) for c in self.categories}
        self.shots = shots
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning (directly, or through its distributed wrapper) at the start of every epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Episodes per epoch."""
        return self.length

    def __iter__(self) -> Iterator[Episode]:
        """This epoch's episodes: a category uniformly, then S supports and a query, all distinct."""
        rng = np.random.default_rng([self.seed, self.epoch])
        for _ in range(self.length):
            category = self.categories[rng.integers(len(self.categories))]
            picks = rng.choice(self.members[category], self.shots + 1, replace=False).tolist()
            yield Episode(category, tuple(picks[: self.shots]), picks[self.shots])


def evaluation_episodes(
    members: Mapping[int, Sequence[int]], shots: int, queries: int, episodes: int, seed: int = 0
) -> list[Episode]:
    """The fixed evaluation items: per category, `episodes` draws of S supports and up to Q distinct queries."""
    items = []
    for category in sorted(members):
        indices = list(members[category])
        count = min(queries, len(indices) - shots)
        if count < 1:
            continue
        rng = np.random.default_rng([seed, category])
        for _ in range(episodes):
            picks = rng.choice(indices, shots + count, replace=False).tolist()
            items += [Episode(category, tuple(picks[:shots]), query) for query in picks[shots:]]
    return items


def crop_matrix(bbox: Sequence[float], size: int, padding: float, angle: float = 0.0, zoom: float = 1.0) -> np.ndarray:
    """3 x 3 affine from original pixels to crop pixels: centre the bbox, pad it to a square, rotate, resize."""
    x, y, w, h = bbox
    side = max(w, h) * padding / zoom
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    to_origin = np.array([[1, 0, -(x + w / 2)], [0, 1, -(y + h / 2)], [0, 0, 1]])
    rotate_scale = np.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]]) * np.array([[size / side], [size / side], [1]])
    to_centre = np.array([[1, 0, size / 2], [0, 1, size / 2], [0, 0, 1]])
    return to_centre @ rotate_scale @ to_origin


@dataclass
class View:
    """One instance as model input: the crop, keypoints normalised to it, visibility inside it, and the affine
    from normalised crop coordinates back to original pixels (2 x 3)."""

    image: torch.Tensor
    keypoints: torch.Tensor
    visibility: torch.Tensor
    crop_to_original: torch.Tensor


def crop_view(image: Image.Image, instance: Instance, size: int, padding: float, angle: float, zoom: float) -> View:
    """Crop `image` around `instance` and carry its keypoints through the same affine."""
    matrix = crop_matrix(instance.bbox, size, padding, angle, zoom)
    inverse = np.linalg.inv(matrix)
    # PIL maps each output pixel through the inverse affine to the input.
    crop = image.transform((size, size), Image.AFFINE, data=tuple(inverse[:2].flatten()), resample=Image.BILINEAR)
    points = np.c_[instance.keypoints, np.ones(len(instance.keypoints))] @ matrix[:2].T / size
    inside = np.all((points >= 0) & (points < 1), axis=1)
    pixels = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255).permute(2, 0, 1)
    return View(
        image=normalize(pixels),
        keypoints=torch.from_numpy(points.astype(np.float32)),
        visibility=torch.from_numpy(np.where(inside, instance.visibility, 0)),
        crop_to_original=torch.from_numpy((inverse @ np.diag([size, size, 1.0]))[:2].astype(np.float32)),
    )


class EpisodeDataset(Dataset):
    """The episodes of one split. An Episode key gives that episode; key `i` gives `episodes[i]` (evaluation's
    fixed list, or the first training epoch's episodes)."""

    def __init__(
        self,
        instances: Sequence[Instance],
        categories: Mapping[int, Category],
        size: int,
        padding: float = 1.25,
        augmentation: Augmentation | None = None,
        episodes: Sequence[Episode] = (),
    ) -> None:
        self.instances = instances
        self.categories = categories
        self.size = size
        self.padding = padding
        self.augmentation = augmentation or Augmentation()
        self.episodes = list(episodes)

    def __len__(self) -> int:
        """The number of fixed episodes (evaluation's items, or the first training epoch's)."""
        return len(self.episodes)

    def __getitem__(self, key: int | Episode) -> dict[str, Any]:
        """The supports' and the query's crops, keypoints and visibility, and the query's original annotation."""
        episode = key if isinstance(key, Episode) else self.episodes[key]
        supports = [self.view(index) for index in episode.supports]
        query = self.view(episode.query)
        instance = self.instances[episode.query]
        category = self.categories[episode.category_id]
        return {
            "support_images": torch.stack([view.image for view in supports]),
            "support_keypoints": torch.stack([view.keypoints for view in supports]),
            "support_visibility": torch.stack([view.visibility for view in supports]),
            "query_image": query.image,
            "query_keypoints": query.keypoints,
            "query_visibility": query.visibility,
            "query_annotated_visibility": torch.from_numpy(instance.visibility),
            "support_annotated_visibility": torch.stack(
                [torch.from_numpy(self.instances[i].visibility) for i in episode.supports]
            ),
            "query_keypoints_original": torch.from_numpy(instance.keypoints),
            "query_bbox": torch.tensor(instance.bbox, dtype=torch.float32),
            "crop_to_original": query.crop_to_original,
            "category_id": category.id,
            "category_name": category.name,
            "skeleton": category.skeleton,
            "annotation_id": instance.annotation_id,
            "support_annotation_ids": tuple(self.instances[i].annotation_id for i in episode.supports),
        }

    def view(self, index: int) -> View:
        """Instance `index` cropped, with a random rotation and scale when augmenting."""
        instance = self.instances[index]
        rotation, scale = self.augmentation.rotation, self.augmentation.scale
        angle = float(torch.empty(1).uniform_(-rotation, rotation)) if rotation else 0.0
        zoom = float(torch.empty(1).uniform_(1 - scale, 1 + scale)) if scale else 1.0
        image = open_image(instance.path, record=f"annotation {instance.annotation_id}")
        return crop_view(image, instance, self.size, self.padding, angle, zoom)
