"""CAPE data: MP-100 annotation files read into checked categories and instances, batched as episodes.

`<root>/annotations/mp100_split<N>_<split>.json` (or the files `data.annotation_files` names, e.g. CapeFormer's
cross-supercategory `cross_category_annotations/fewshot_{train,test}_<supercategory>.json`) is COCO style:
`images[]` (`id`, `file_name` under a category folder of `<root>/images/`, `width`, `height`), `annotations[]`
(`id`, `image_id`, `category_id`, `bbox` as `[x, y, w, h]`, `keypoints` as `[x, y, v] * K`) and `categories[]`
(`id`, `name`, `keypoints` names, `skeleton`). Every annotation is checked on load: its category and image exist,
`len(keypoints) == 3 * K` of its category, every visibility is 0, 1 or 2, the bbox has a positive width and height,
the image file lies under the data root and exists. A failure is a DataError naming the file, the annotation id and
the category; it is raised or, with `data.on_error=skip`, counted and skipped — never shortened, padded or guessed.

Keypoint counts differ between categories: a batch pads K to its largest and carries `keypoint_mask`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from vigil.core.augmentation import FLIPS, augmentation_pipeline
from vigil.core.data import TaskDataModule
from vigil.core.errors import ConfigError, DataError
from vigil.core.files import IMAGENET, SPLITS, OnError, RecordPolicy, read_json, resolve_under, timm_normalization
from vigil.core.guardrails import AuditReport
from vigil.tasks.cape.episodes import EpisodeDataset, TrainingEpisodes, evaluation_episodes
from vigil.tasks.cape.health import audit_splits
from vigil.tasks.cape.masking import CapeMasking
from vigil.tasks.cape.records import CapeBatch, CapeContext, Category, Instance, SplitFile
from vigil.tasks.cape.synthetic import SyntheticCape

SkeletonBase = Literal["auto", 0, 1]


def split_file_path(root: Path, annotation_dir: str, split: int, name: str) -> Path:
    """`<root>/<annotation_dir>/mp100_split<split>_<name>.json`."""
    return Path(root) / annotation_dir / f"mp100_split{split}_{name}.json"


def read_split_file(
    path: Path, root: Path, image_dir: str, policy: RecordPolicy, skeleton_base: SkeletonBase = "auto"
) -> SplitFile:
    """Read and check one MP-100 split file; bad annotations are raised or skipped by `policy`."""
    data = read_json(path, missing="check data.root and data.split")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DataError(path, None, f"no '{key}' list", "is this an MP-100 / COCO keypoint file?")
    categories = {}
    for index, entry in enumerate(data["categories"]):
        category = read_category(path, f"categories[{index}]", entry, skeleton_base)
        categories[category.id] = category
    images = {entry["id"]: entry for entry in data["images"] if isinstance(entry, dict) and "id" in entry}
    instances = []
    for index, entry in enumerate(data["annotations"]):
        try:
            instances.append(read_instance(path, index, entry, categories, images, root, image_dir))
        except DataError as error:
            policy.reject(error)
    return SplitFile(path, categories, instances, policy)


def read_category(path: Path, where: str, entry: Any, skeleton_base: SkeletonBase) -> Category:
    """One `categories[]` entry, its skeleton turned 0-based."""
    if not isinstance(entry, dict) or "id" not in entry or not isinstance(entry.get("keypoints"), list):
        raise DataError(path, where, "malformed category: no 'id' or no 'keypoints' name list", "fix the category")
    if not entry["keypoints"]:
        raise DataError(path, where, f"category '{entry.get('name')}' has no keypoints", "fix the category")
    names = tuple(str(name) for name in entry["keypoints"])
    pairs = [tuple(int(i) for i in pair) for pair in entry.get("skeleton") or []]
    base = skeleton_base if skeleton_base != "auto" else detect_skeleton_base(pairs, len(names))
    skeleton = tuple((i - base, j - base) for i, j in pairs)
    if any(not (0 <= i < len(names) and 0 <= j < len(names)) for i, j in skeleton):
        raise DataError(
            path,
            where,
            f"skeleton index out of range for category '{entry.get('name')}' with {len(names)} keypoints "
            f"(read as {base}-based)",
            "fix the skeleton, or set data.skeleton_base",
        )
    return Category(int(entry["id"]), str(entry.get("name", entry["id"])), names, skeleton)


def detect_skeleton_base(pairs: list[tuple[int, ...]], count: int) -> int:
    """1 when an index equals K (COCO's 1-based convention), else 0 (the CAPE reference code's)."""
    indices = {index for pair in pairs for index in pair}
    return 1 if count in indices and 0 not in indices else 0


def read_instance(
    path: Path,
    index: int,
    entry: Any,
    categories: dict[int, Category],
    images: dict[Any, dict],
    root: Path,
    image_dir: str,
) -> Instance:
    """One annotation, checked in the order: category, image, keypoint length, visibility, bbox, image file."""
    if not isinstance(entry, dict) or "id" not in entry:
        raise DataError(path, f"annotations[{index}]", "malformed annotation: no 'id'", "fix the record")
    record = f"annotation {entry['id']}"
    category = categories.get(entry.get("category_id"))
    if category is None:
        raise DataError(
            path, record, f"unknown category: category_id {entry.get('category_id')} is not in categories[]", "fix it"
        )
    named = f"category '{category.name}'"
    image = images.get(entry.get("image_id"))
    if image is None:
        what = f"unknown image: image_id {entry.get('image_id')} is not in images[] ({named})"
        raise DataError(path, record, what, "fix it")
    values = entry.get("keypoints")
    expected = 3 * category.num_keypoints
    if not isinstance(values, list) or len(values) != expected:
        length = len(values) if isinstance(values, list) else type(values).__name__
        raise DataError(
            path,
            record,
            f"keypoints of the wrong length: {length} values, {named} has {category.num_keypoints} keypoints "
            f"({expected} values)",
            "the keypoint and visibility arrays must match the category; fix the annotation",
        )
    if not all(isinstance(value, int | float) for value in values):
        raise DataError(path, record, f"keypoints not all numbers ({named})", "fix the annotation")
    triples = np.asarray(values, dtype=np.float64).reshape(-1, 3)
    bad = sorted({float(v) for v in triples[:, 2] if v not in (0, 1, 2)})
    if bad:
        raise DataError(
            path, record, f"visibility outside {{0, 1, 2}}: {bad} ({named})", "use 0 unlabelled, 1 occluded, 2 visible"
        )
    bbox = entry.get("bbox")
    numbers = isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)
    if not (numbers and bbox[2] > 0 and bbox[3] > 0):
        raise DataError(path, record, f"invalid bbox {bbox}: width and height must be positive ({named})", "fix it")
    file_name = image.get("file_name", "")
    image_path = resolve_under(Path(root) / image_dir, file_name, path, record)
    if not image_path.is_file():
        raise DataError(
            path, record, f"missing image file: {image_dir}/{file_name} not found ({named})", "add it or fix data.root"
        )
    return Instance(
        annotation_id=int(entry["id"]),
        category_id=category.id,
        path=image_path,
        bbox=tuple(float(v) for v in bbox),
        keypoints=triples[:, :2].astype(np.float32),
        visibility=triples[:, 2].astype(np.int64),
    )


def collate_episodes(samples: list[dict[str, Any]]) -> CapeBatch:
    """Stack episodes, padding every keypoint array to the largest K (padding is unlabelled and masked)."""
    count = max(sample["query_keypoints"].shape[0] for sample in samples)

    def stacked(name: str, dim: int) -> torch.Tensor:
        tensors = [sample[name] for sample in samples]
        return torch.stack([pad_keypoints(tensor, count, dim) for tensor in tensors])

    support_visibility = stacked("support_visibility", 1)
    mask = torch.zeros(len(samples), count, dtype=torch.bool)
    for row, sample in enumerate(samples):
        mask[row, : sample["query_keypoints"].shape[0]] = True
    return CapeBatch(
        support_images=torch.stack([sample["support_images"] for sample in samples]),
        support_keypoints=stacked("support_keypoints", 1),
        support_weights=(support_visibility > 0).float(),
        query_images=torch.stack([sample["query_image"] for sample in samples]),
        keypoint_mask=mask,
        query_keypoints=stacked("query_keypoints", 0),
        query_visibility=stacked("query_visibility", 0),
        support_visibility=support_visibility,
        query_annotated_visibility=stacked("query_annotated_visibility", 0),
        support_annotated_visibility=stacked("support_annotated_visibility", 1),
        query_keypoints_original=stacked("query_keypoints_original", 0),
        query_bbox=torch.stack([sample["query_bbox"] for sample in samples]),
        crop_to_original=torch.stack([sample["crop_to_original"] for sample in samples]),
        category_id=torch.tensor([sample["category_id"] for sample in samples]),
        category_name=[sample["category_name"] for sample in samples],
        skeleton=[sample["skeleton"] for sample in samples],
        annotation_id=torch.tensor([sample["annotation_id"] for sample in samples]),
        support_annotation_ids=[sample["support_annotation_ids"] for sample in samples],
    )


def pad_keypoints(tensor: torch.Tensor, count: int, dim: int) -> torch.Tensor:
    """Zero-pad the keypoint dimension `dim` of `tensor` to `count`."""
    shape = list(tensor.shape)
    shape[dim] = count - shape[dim]
    return torch.cat([tensor, tensor.new_zeros(shape)], dim=dim)


class CapeDataModule(TaskDataModule):
    """MP-100 (one of its five splits), or the generated default (`synthetic` set), as support/query episodes."""

    batch_type = CapeBatch
    synthetic_type = SyntheticCape

    def __init__(
        self,
        root: str,
        split: int = 1,
        annotation_dir: str = "annotations",
        image_dir: str = "images",
        image_size: int = 64,
        padding: float = 1.25,
        shots: int = 1,
        queries: int = 15,
        episodes: int = 200,
        episodes_per_epoch: int = 1000,
        batch_size: int = 16,
        num_workers: int | str = 0,
        pin_memory: bool | str = False,
        augment: list[Any] | None = None,
        skeleton_base: SkeletonBase = "auto",
        on_error: OnError = "raise",
        seed: int = 0,
        synthetic: dict[str, Any] | None = None,
        annotation_files: dict[str, str] | None = None,
        backbone: str | None = None,
    ) -> None:
        super().__init__(root, batch_size, num_workers, pin_memory, synthetic, seed)
        if split not in range(1, 6):
            raise ConfigError(f"data.split={split} is not an MP-100 split; valid: 1, 2, 3, 4, 5")
        if shots < 1 or queries < 1 or episodes < 1:
            raise ConfigError("data.shots, data.queries and data.episodes must be at least 1")
        if annotation_files is not None and set(annotation_files) != set(SPLITS):
            raise ConfigError(
                f"data.annotation_files names {sorted(annotation_files)}: give exactly {list(SPLITS)} "
                "(paths under data.root), or null for the MP-100 split files"
            )
        # The backbone's own input statistics (its timm pretrained config).
        self.normalization = timm_normalization(backbone) if backbone else IMAGENET
        self.split = split
        self.annotation_files = dict(annotation_files) if annotation_files is not None else None
        self.annotation_dir = annotation_dir
        self.image_dir = image_dir
        self.image_size = image_size
        self.padding = padding
        self.shots = shots
        self.queries = queries
        self.episodes = episodes
        self.episodes_per_epoch = episodes_per_epoch
        self.augment = augmentation_pipeline(augment)
        if self.augment is not None and any(isinstance(t, FLIPS) for t in self.augment.transforms):
            raise ConfigError(
                "data.augment has a flip: MP-100 categories declare no left/right keypoint pairs, so a flip would "
                "swap what the keypoints mean; remove it"
            )
        self.skeleton_base = skeleton_base
        self.on_error = on_error
        self.files: dict[str, SplitFile] = {}

    def read(self) -> None:
        """Read and check the three split files; one policy counts what every split skipped."""
        policy = RecordPolicy(self.on_error)
        for name in SPLITS:
            path = self.annotation_path(name)
            self.files[name] = read_split_file(path, self.data_root, self.image_dir, policy, self.skeleton_base)

    def annotation_path(self, split: str) -> Path:
        """The annotation file of `split`: from `data.annotation_files` (kept under the root), else MP-100's."""
        if self.annotation_files is None:
            return split_file_path(self.data_root, self.annotation_dir, self.split, split)
        return resolve_under(self.data_root, self.annotation_files[split], "data.annotation_files", split)

    def audit(self, masking: CapeMasking) -> AuditReport:
        """The CAPE audit of the three splits (see `health.audit_splits`)."""
        self.setup()
        return audit_splits(self.files, masking, self.shots, self.queries, self.training_episodes())

    def context(self) -> CapeContext:
        """Every category of every split, id -> name, for the module's per-category metric names; the input
        normalisation, to draw the crops back."""
        self.setup()
        names = {c.id: c.name for file in self.files.values() for c in file.categories.values()}
        return CapeContext(names, self.normalization)

    def training_episodes(self) -> TrainingEpisodes:
        """The class-balanced training episode sampler, seeded by `data.seed` (and the epoch)."""
        members = self.files["train"].instances_by_category
        return TrainingEpisodes(members, self.shots, self.episodes_per_epoch, self.seed)

    def image_files(self, split: str) -> list[Path]:
        """The image files of `split`'s instances, for the preflight's leakage check."""
        self.setup()
        return [instance.path for instance in self.files[split].instances]

    def dataset(self, split: str) -> EpisodeDataset:
        """Training: augmented episodes; val and test: the fixed, seeded evaluation episodes, not augmented."""
        self.setup()
        file = self.files[split]
        if split == "train":
            # Integer keys give the first epoch's episodes: Lightning's `overfit_batches` (debug=overfit) replaces
            # the sampler with a sequential one, and must then see the same few episodes every epoch.
            items = list(self.training_episodes())
            augment = self.augment
        else:
            items = evaluation_episodes(file.instances_by_category, self.shots, self.queries, self.episodes, self.seed)
            augment = None
        return EpisodeDataset(
            file.instances, file.categories, self.image_size, self.padding, augment, items, self.normalization
        )

    def training_batches(self, dataset: EpisodeDataset) -> dict[str, Any]:
        """Batches of episodes drawn afresh each epoch by the episode sampler (keyed by Episode)."""
        return {"batch_size": self.batch_size, "sampler": self.training_episodes(), "drop_last": True}

    def collate(self, split: str) -> Callable[[list[dict[str, Any]]], CapeBatch]:
        """Every split pads and stacks its episodes the same way."""
        return collate_episodes
