"""Segmentation data: Kvasir-SEG and any image/mask folder pair, read into typed records and batches.

Layout under `data.root`: `images/<name>.<ext>`, `masks/<name>.<ext>` (same names), optionally
`unannotated.txt` (images that have no annotation: their samples carry `annotated=False`, never a made-up empty
mask) and a split file `{"train": ["images/a.jpg", ...], "val": [...], "test": [...]}`. Masks are either
thresholded (`mask_encoding=threshold`, Kvasir-SEG's JPEG masks: value > 127 is foreground) or class indices
(`mask_encoding=index`, PNG label maps with values in 0..num_classes-1 and an optional `ignore_index`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from vigil.core.batch import meta, model_input, target
from vigil.core.errors import DataError
from vigil.core.files import OnError, RecordPolicy, resolve_under
from vigil.core.guardrails import AuditReport
from vigil.core.sampling import evaluation_sampler
from vigil.core.synthetic import synthetic_folder
from vigil.tasks.segmentation.health import audit_segmentation
from vigil.tasks.segmentation.synthetic import NAME as SYNTHETIC_NAME
from vigil.tasks.segmentation.synthetic import SyntheticSegmentation, ensure_synthetic_segmentation

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "val", "test")
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
MaskEncoding = Literal["threshold", "index"]


@dataclass(frozen=True)
class SegmentationRecord:
    """One image, its mask file (None when unannotated) and whether it was annotated at all."""

    name: str
    image_path: Path
    mask_path: Path | None
    annotated: bool


@dataclass(frozen=True)
class MaskFacts:
    """What the scan learned about one record's mask, for the audit."""

    name: str
    annotated: bool
    foreground_fraction: float
    non_binary_fraction: float
    ignored_fraction: float


@dataclass
class SegmentationBatch:
    """A batch: `image` goes to the model; `mask` and `annotated` to loss and metrics; `name` is bookkeeping."""

    image: torch.Tensor = model_input()
    mask: torch.Tensor = target()
    annotated: torch.Tensor = target()
    name: list[str] = meta()

    def __len__(self) -> int:
        return self.image.shape[0]


@dataclass(frozen=True)
class MaskSpec:
    """How mask files encode labels."""

    num_classes: int
    encoding: MaskEncoding
    threshold: int
    ignore_index: int | None

    def label_set(self) -> set[int]:
        """The values an index mask may contain."""
        labels = set(range(max(self.num_classes, 2)))
        return labels | ({self.ignore_index} if self.ignore_index is not None else set())

    def decode(self, raw: np.ndarray) -> np.ndarray:
        """Raw mask pixels to class indices (binary: 0/1)."""
        if self.encoding == "threshold":
            return (raw > self.threshold).astype(np.int64)
        return raw.astype(np.int64)


class SegmentationDataset(Dataset):
    """Reads, resizes and normalises the records of one split."""

    def __init__(self, records: list[SegmentationRecord], spec: MaskSpec, size: tuple[int, int], augment: bool):
        self.records = records
        self.spec = spec
        self.size = size
        self.augment = augment

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        height, width = self.size
        image = Image.open(record.image_path).convert("RGB").resize((width, height), Image.BILINEAR)
        pixels = torch.from_numpy(np.asarray(image, np.float32) / 255.0).permute(2, 0, 1)
        if record.annotated:
            labels = self.spec.decode(np.asarray(Image.open(record.mask_path).convert("L")))
            resized = Image.fromarray(labels.astype(np.uint8)).resize((width, height), Image.NEAREST)
            mask = torch.from_numpy(np.asarray(resized, np.int64).copy())
        else:
            mask = torch.zeros(height, width, dtype=torch.long)
        if self.augment:
            pixels, mask = random_flips(pixels, mask)
        return {
            "image": (pixels - IMAGENET_MEAN) / IMAGENET_STD,
            "mask": mask,
            "annotated": record.annotated,
            "name": record.name,
        }


def random_flips(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip image and mask together, horizontally and vertically, each with probability 1/2."""
    for dim in (-1, -2):
        if torch.rand(()) < 0.5:
            image, mask = image.flip(dim), mask.flip(dim)
    return image, mask


def collate_segmentation(samples: list[dict[str, Any]]) -> SegmentationBatch:
    """Stack samples into a SegmentationBatch."""
    return SegmentationBatch(
        image=torch.stack([s["image"] for s in samples]),
        mask=torch.stack([s["mask"] for s in samples]),
        annotated=torch.tensor([s["annotated"] for s in samples], dtype=torch.bool),
        name=[s["name"] for s in samples],
    )


class SegmentationDataModule(pl.LightningDataModule):
    """Kvasir-SEG, any image/mask folder pair, or the generated default (`synthetic` set)."""

    batch_type = SegmentationBatch

    def __init__(
        self,
        root: str,
        num_classes: int = 1,
        mask_encoding: MaskEncoding = "threshold",
        mask_threshold: int = 127,
        ignore_index: int | None = None,
        image_size: tuple[int, int] | list[int] = (256, 256),
        image_dir: str = "images",
        mask_dir: str = "masks",
        unannotated_file: str = "unannotated.txt",
        split_file: str | None = None,
        split_fractions: tuple[float, float, float] | list[float] = (0.8, 0.1, 0.1),
        split_seed: int = 0,
        batch_size: int = 8,
        num_workers: int = 0,
        augment: bool = True,
        on_error: OnError = "raise",
        class_names: list[str] | None = None,
        synthetic: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if mask_encoding == "threshold" and num_classes != 1:
            raise DataError("config", "data.mask_encoding", "threshold masks are binary", "use num_classes=1")
        self.root = Path(root)
        self.spec = MaskSpec(num_classes, mask_encoding, mask_threshold, ignore_index)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.image_dir, self.mask_dir, self.unannotated_file = image_dir, mask_dir, unannotated_file
        self.split_file = split_file
        self.split_fractions = tuple(split_fractions)
        self.split_seed = split_seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.policy = RecordPolicy(on_error)
        self.class_names = list(class_names) if class_names else default_class_names(num_classes)
        self.synthetic = SyntheticSegmentation(**synthetic) if synthetic else None
        self.splits: dict[str, list[SegmentationRecord]] | None = None
        self.facts: dict[str, list[MaskFacts]] = {}
        self.listing_warnings: list[str] = []
        self.skipped: dict[str, RecordPolicy] = {}

    @property
    def data_root(self) -> Path:
        """The folder actually read: `root`, or the generated data set's folder under it."""
        return synthetic_folder(self.root, SYNTHETIC_NAME, self.synthetic) if self.synthetic else self.root

    def prepare_data(self) -> None:
        """Write the synthetic data set when it is missing (rank zero only, under DDP)."""
        if self.synthetic:
            ensure_synthetic_segmentation(self.root, self.synthetic)

    def setup(self, stage: str | None = None) -> None:
        """List, split and validate the records once; later calls reuse them."""
        if self.splits is not None:
            return
        records, self.listing_warnings = list_records(
            self.data_root, self.image_dir, self.mask_dir, self.unannotated_file
        )
        if self.split_file:
            listed = read_split_file(self.data_root, self.split_file, records)
        else:
            listed = split_by_seed(records, self.split_fractions, self.split_seed)
        self.splits, self.facts = {}, {}
        for split, records in listed.items():
            policy = RecordPolicy(self.policy.on_error)
            kept, facts = [], []
            for record in records:
                try:
                    facts.append(scan_record(record, self.spec))
                    kept.append(record)
                except DataError as error:
                    policy.reject(error)
            self.splits[split], self.facts[split], self.skipped[split] = kept, facts, policy

    def audit(self, masking: Any) -> AuditReport:
        """The segmentation audit of the prepared splits (see `health.audit_segmentation`)."""
        self.setup()
        return audit_segmentation(
            self.facts, self.skipped, self.spec.encoding, masking, self.listing_warnings, self.data_root
        )

    def dataset(self, split: str) -> SegmentationDataset:
        """The Dataset of one split; augmentation only for training."""
        self.setup()
        return SegmentationDataset(self.splits[split], self.spec, self.image_size, self.augment and split == "train")

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.dataset(split)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=None if shuffle else evaluation_sampler(dataset),
            num_workers=self.num_workers,
            collate_fn=collate_segmentation,
            persistent_workers=self.num_workers > 0,
            # A last training batch of one sample breaks BatchNorm; evaluation keeps every sample.
            drop_last=shuffle and len(dataset) > self.batch_size,
        )


def default_class_names(num_classes: int) -> list[str]:
    """`foreground` for binary data, `class_<i>` otherwise."""
    return ["foreground"] if num_classes == 1 else [f"class_{i}" for i in range(num_classes)]


def list_records(
    root: Path, image_dir: str, mask_dir: str, unannotated_file: str
) -> tuple[list[SegmentationRecord], list[str]]:
    """Pair every image with its mask by name; images listed in `unannotated_file` are unannotated."""
    images_folder = root / image_dir
    images = sorted(p for p in images_folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if root.exists() else []
    if not images:
        raise DataError(
            images_folder,
            None,
            f"no image files ({', '.join(IMAGE_SUFFIXES)})",
            f"point data.root at a folder with {image_dir}/ and {mask_dir}/",
        )
    masks = {p.stem: p for p in (root / mask_dir).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
    unannotated = read_name_list(root / unannotated_file)
    warnings = []
    unknown = sorted(unannotated - {p.stem for p in images})
    if unknown:
        warnings.append(f"{root / unannotated_file} lists {len(unknown)} names with no image, e.g. {unknown[:3]}")
    records = [
        SegmentationRecord(
            name=path.stem,
            image_path=path,
            mask_path=None if path.stem in unannotated else masks.get(path.stem),
            annotated=path.stem not in unannotated,
        )
        for path in images
    ]
    return records, warnings


def read_name_list(path: Path) -> set[str]:
    """Names (file stems) listed one per line; an absent file lists none."""
    if not path.exists():
        return set()
    return {Path(line.strip()).stem for line in path.read_text().splitlines() if line.strip()}


def read_split_file(root: Path, split_file: str, records: list[SegmentationRecord]) -> dict[str, list]:
    """Assign records to splits from a JSON file of image paths relative to the data root."""
    path = root / split_file
    if not path.is_file():
        raise DataError(path, None, "split file not found", "fix data.split_file, or set it to null to split by seed")
    try:
        listed = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(path, f"line {error.lineno}", f"malformed JSON: {error.msg}", "fix the split file") from None
    by_path = {record.image_path.resolve(): record for record in records}
    splits = {}
    for split in SPLITS:
        splits[split] = []
        for index, relative in enumerate(listed.get(split, [])):
            resolved = resolve_under(root, relative, path, f"{split}[{index}]")
            if resolved not in by_path:
                raise DataError(path, f"{split}[{index}]", f"'{relative}' is not an image under {root}", "fix it")
            splits[split].append(by_path[resolved])
    return splits


def split_by_seed(
    records: list[SegmentationRecord], fractions: tuple[float, ...], seed: int
) -> dict[str, list[SegmentationRecord]]:
    """A deterministic train/val/test split: shuffle names with `seed`, cut by `fractions`."""
    ordered = sorted(records, key=lambda r: r.name)
    random.Random(seed).shuffle(ordered)
    total = sum(fractions)
    n_train = round(len(ordered) * fractions[0] / total)
    n_val = round(len(ordered) * fractions[1] / total)
    return {
        "train": ordered[:n_train],
        "val": ordered[n_train : n_train + n_val],
        "test": ordered[n_train + n_val :],
    }


def scan_record(record: SegmentationRecord, spec: MaskSpec) -> MaskFacts:
    """Decode a record's image and mask once, check them, and return the mask facts; DataError if bad."""
    image = open_image(record.image_path)
    if not record.annotated:
        return MaskFacts(record.name, False, 0.0, 0.0, 0.0)
    if record.mask_path is None:
        raise DataError(
            record.image_path,
            None,
            "no mask for an image listed as annotated",
            "add its mask, or list the image in the unannotated file",
        )
    mask = open_image(record.mask_path)
    if mask.size != image.size:
        raise DataError(
            record.mask_path,
            None,
            f"mask size {mask.size[0]}x{mask.size[1]} differs from image size {image.size[0]}x{image.size[1]}",
            "re-export the mask at the image's size",
        )
    raw = np.asarray(mask.convert("L"))
    ignored = raw == spec.ignore_index if spec.ignore_index is not None else np.zeros(raw.shape, bool)
    if spec.encoding == "index":
        outside = sorted(set(np.unique(raw).tolist()) - spec.label_set())
        if outside:
            raise DataError(
                record.mask_path,
                None,
                f"mask values {outside[:5]} outside the label set {sorted(spec.label_set())}",
                "set data.num_classes / data.ignore_index, or data.mask_encoding=threshold for 0/255 masks",
            )
    labels = spec.decode(raw)
    counted = ~ignored
    foreground = float((labels[counted] > 0).mean()) if counted.any() else 0.0
    non_binary = float(((raw > 32) & (raw < 223)).mean()) if spec.encoding == "threshold" else 0.0
    return MaskFacts(record.name, True, foreground, non_binary, float(ignored.mean()))


def open_image(path: Path) -> Image.Image:
    """Open and fully decode an image, turning a corrupt file into a DataError."""
    try:
        image = Image.open(path)
        image.load()
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        raise DataError(path, None, f"cannot be decoded as an image: {error}", "replace or remove the file") from None
    return image
