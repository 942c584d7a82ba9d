"""Segmentation data: Kvasir-SEG and any image/mask folder pair, read into typed records and batches.

Layout under `data.root`: `images/<name>.<ext>`, `masks/<name>.<ext>` (same names), optionally
`unannotated.txt` (images that have no annotation: their samples carry `annotated=False`, never a made-up empty
mask) and a split file `{"train": ["images/a.jpg", ...], "val": [...], "test": [...]}`. Masks are either
thresholded (`mask_encoding=threshold`, Kvasir-SEG's JPEG masks: value > 127 is foreground) or class indices
(`mask_encoding=index`, PNG label maps with values in 0..num_classes-1 and an optional `ignore_index`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vigil.core.data import TaskDataModule
from vigil.core.errors import ConfigError, DataError
from vigil.core.files import (
    IMAGE_SUFFIXES,
    SPLITS,
    OnError,
    RecordPolicy,
    check_split_fractions,
    is_image_file,
    normalize,
    open_image,
    read_json,
    resolve_under,
    seeded_split,
)
from vigil.core.guardrails import AuditReport
from vigil.tasks.segmentation.health import audit_splits
from vigil.tasks.segmentation.masking import SegmentationMasking
from vigil.tasks.segmentation.records import MaskEncoding, MaskFacts, MaskSpec, SegmentationBatch, SegmentationRecord
from vigil.tasks.segmentation.synthetic import SyntheticSegmentation


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
        image = open_image(record.image_path).resize((width, height), Image.BILINEAR)
        pixels = torch.from_numpy(np.asarray(image, np.float32) / 255.0).permute(2, 0, 1)
        if record.annotated:
            labels = self.spec.decode(np.asarray(open_image(record.mask_path, "L")))
            resized = Image.fromarray(labels.astype(np.uint8)).resize((width, height), Image.NEAREST)
            mask = torch.from_numpy(np.asarray(resized, np.int64).copy())
        else:
            mask = torch.zeros(height, width, dtype=torch.long)
        if self.augment:
            pixels, mask = random_flips(pixels, mask)
        return {
            "image": normalize(pixels),
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


class SegmentationDataModule(TaskDataModule):
    """Kvasir-SEG, any image/mask folder pair, or the generated default (`synthetic` set)."""

    batch_type = SegmentationBatch
    synthetic_type = SyntheticSegmentation

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
        pin_memory: bool = False,
        augment: bool = True,
        on_error: OnError = "raise",
        class_names: list[str] | None = None,
        synthetic: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(root, batch_size, num_workers, pin_memory, synthetic, seed)
        if mask_encoding == "threshold" and num_classes != 1:
            raise ConfigError("data.mask_encoding=threshold masks are binary: use data.num_classes=1")
        self.spec = MaskSpec(num_classes, mask_encoding, mask_threshold, ignore_index)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.image_dir, self.mask_dir, self.unannotated_file = image_dir, mask_dir, unannotated_file
        self.split_file = split_file
        self.split_fractions = check_split_fractions(split_fractions)
        self.split_seed = split_seed
        self.augment = augment
        self.on_error = on_error
        self.class_names = list(class_names) if class_names else default_class_names(num_classes)
        self.splits: dict[str, list[SegmentationRecord]] = {}
        self.facts: dict[str, list[MaskFacts]] = {}
        self.listing_warnings: list[str] = []
        self.skipped: dict[str, RecordPolicy] = {}

    def read(self) -> None:
        """List, split and validate the records; a bad record is raised or skipped and counted by policy."""
        records, self.listing_warnings = list_records(
            self.data_root, self.image_dir, self.mask_dir, self.unannotated_file
        )
        if self.split_file:
            listed = read_split_file(self.data_root, self.split_file, records)
        else:
            listed = seeded_split(records, self.split_fractions, self.split_seed, key=lambda r: r.name)
        for split, split_records in listed.items():
            policy = RecordPolicy(self.on_error)
            kept, facts = [], []
            for record in split_records:
                try:
                    facts.append(scan_record(record, self.spec))
                    kept.append(record)
                except DataError as error:
                    policy.reject(error)
            self.splits[split], self.facts[split], self.skipped[split] = kept, facts, policy

    def audit(self, masking: SegmentationMasking) -> AuditReport:
        """The segmentation audit of the prepared splits (see `health.audit_splits`)."""
        self.setup()
        return audit_splits(
            self.facts, self.skipped, self.spec.encoding, masking, self.listing_warnings, self.data_root
        )

    def image_files(self, split: str) -> list[Path]:
        """The image files of `split`, for the preflight's leakage check."""
        self.setup()
        return [record.image_path for record in self.splits[split]]

    def dataset(self, split: str) -> SegmentationDataset:
        """The Dataset of one split; augmentation only for training."""
        self.setup()
        return SegmentationDataset(self.splits[split], self.spec, self.image_size, self.augment and split == "train")

    def collate(self, split: str) -> Callable[[list[dict[str, Any]]], SegmentationBatch]:
        """Every split stacks its samples the same way."""
        return collate_segmentation


def default_class_names(num_classes: int) -> list[str]:
    """`foreground` for binary data, `class_<i>` otherwise."""
    return ["foreground"] if num_classes == 1 else [f"class_{i}" for i in range(num_classes)]


def list_records(
    root: Path, image_dir: str, mask_dir: str, unannotated_file: str
) -> tuple[list[SegmentationRecord], list[str]]:
    """Pair every image with its mask by name; images listed in `unannotated_file` are unannotated."""
    images_folder = root / image_dir
    images = sorted(p for p in images_folder.glob("*") if is_image_file(p)) if root.exists() else []
    if not images:
        raise DataError(
            images_folder,
            None,
            f"no image files ({', '.join(IMAGE_SUFFIXES)})",
            f"point data.root at a folder with {image_dir}/ and {mask_dir}/",
        )
    masks = {p.stem: p for p in (root / mask_dir).glob("*") if is_image_file(p)}
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
    listed = read_json(path, missing="fix data.split_file, or set it to null to split by seed")
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


def scan_record(record: SegmentationRecord, spec: MaskSpec) -> MaskFacts:
    """Decode a record's image and mask once, check them, and return the mask facts; DataError if bad."""
    image = open_image(record.image_path, mode=None)
    if not record.annotated:
        return MaskFacts(record.name, False, 0.0, 0.0, 0.0)
    if record.mask_path is None:
        raise DataError(
            record.image_path,
            None,
            "no mask for an image listed as annotated",
            "add its mask, or list the image in the unannotated file",
        )
    mask = open_image(record.mask_path, mode=None)
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
