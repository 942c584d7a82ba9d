"""Episodes (support shots and a query of one category) and the crop that turns an instance into model input.

- Training: class-balanced episodes, redrawn every epoch from `(seed, epoch)`: a category uniformly among those
  with at least S + 1 instances, then S supports and one query, all distinct instances. The same episodes on
  every DDP rank; Lightning's sampler wrapper shards them.
- Evaluation: a fixed list, per category (sorted by id) `episodes` episodes drawn from `(seed, category)`, each
  S supports and up to Q queries, all distinct; one item per (episode, query).
- Crop: the bbox, padded by `padding` (1.25 as in the CAPE reference pipeline) to a square, resized to
  `image_size`. Training views then go through `data.augment` (torchvision transforms.v2 on the crop and its
  `KeyPoints` together; the reference pipeline's rotation +-15 degrees and scale +-0.15 by default).
  A keypoint that lands outside the crop is unlabelled (v=0) for training that sample; its coordinates are kept as
  they are, and evaluation still scores it (by its annotated visibility, in original pixels).
  No flips: MP-100 files carry no left/right pairs, so a flip would swap what the keypoints mean.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from torchvision import tv_tensors
from torchvision.transforms import v2

from vigil.core.files import IMAGENET, Normalization, image_input, open_image
from vigil.tasks.cape.records import Category, Instance


class Episode(NamedTuple):
    """Support instances and one query instance of one category, as indices into a split's instances."""

    category_id: int
    supports: tuple[int, ...]
    query: int


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


def crop_matrix(bbox: Sequence[float], size: int, padding: float) -> np.ndarray:
    """3 x 3 affine from original pixels to crop pixels: centre the bbox, pad it to a square, resize."""
    x, y, w, h = bbox
    scale = size / (max(w, h) * padding)
    return np.array([[scale, 0, size / 2 - scale * (x + w / 2)], [0, scale, size / 2 - scale * (y + h / 2)], [0, 0, 1]])


@dataclass
class View:
    """One instance as model input: the crop, keypoints normalised to it, visibility inside it, and the affine
    from normalised crop coordinates back to original pixels (2 x 3; of the crop before augmentation, which only
    training views get and nothing maps back)."""

    image: torch.Tensor
    keypoints: torch.Tensor
    visibility: torch.Tensor
    crop_to_original: torch.Tensor


def crop_view(
    image: Image.Image,
    instance: Instance,
    size: int,
    padding: float,
    augment: v2.Compose | None = None,
    normalization: Normalization = IMAGENET,
) -> View:
    """Crop `image` around `instance`, carry its keypoints through the same affine, then through `augment`."""
    matrix = crop_matrix(instance.bbox, size, padding)
    inverse = np.linalg.inv(matrix)
    # PIL maps each output pixel through the inverse affine to the input.
    crop = image.transform((size, size), Image.AFFINE, data=tuple(inverse[:2].flatten()), resample=Image.BILINEAR)
    points = torch.from_numpy(np.c_[instance.keypoints, np.ones(len(instance.keypoints))] @ matrix[:2].T)
    if augment is not None:
        # Crop pixels put pixel edges at integers, the convention of v2's affine for images and keypoints alike.
        # The crop stays a PIL image: PIL's affine on 8-bit pixels costs a third of the float-tensor kernel's.
        crop, moved = augment(crop, tv_tensors.KeyPoints(points.float(), canvas_size=(size, size)))
        points = moved.as_subclass(torch.Tensor).double()
    points = points / size
    inside = ((points >= 0) & (points < 1)).all(dim=1)
    return View(
        image=image_input(crop, normalization),
        keypoints=points.float(),
        visibility=torch.where(inside, torch.from_numpy(instance.visibility), 0),
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
        augment: v2.Compose | None = None,
        episodes: Sequence[Episode] = (),
        normalization: Normalization = IMAGENET,
    ) -> None:
        self.instances = instances
        self.categories = categories
        self.size = size
        self.padding = padding
        self.augment = augment
        self.normalization = normalization
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
        """Instance `index` cropped, and augmented when this dataset augments."""
        instance = self.instances[index]
        image = open_image(instance.path, record=f"annotation {instance.annotation_id}")
        return crop_view(image, instance, self.size, self.padding, self.augment, self.normalization)
