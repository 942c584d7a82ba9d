"""Segmentation data: Kvasir-SEG and any image/mask folder pair, read into typed records and batches.

Layout under `data.root`: `images/<name>.<ext>`, `masks/<name>.<ext>` (same names), optionally
`unannotated.txt` (images that have no annotation: their samples carry `annotated=False`, never a made-up empty
mask) and a split file `{"train": ["images/a.jpg", ...], "val": [...], "test": [...]}`. Masks are either
thresholded (`mask_encoding=threshold`, Kvasir-SEG's JPEG masks: value > 127 is foreground) or class indices
(`mask_encoding=index`, PNG label maps with values in 0..num_classes-1 and an optional `ignore_index`).

Several data sets (`data.roots={kvasir: ..., cvc: ...}`, PraNet's Kvasir-SEG + CVC-ClinicDB): each root is listed,
split and confined on its own; training and validation take their union, and each test set is scored and logged
apart (`test/<name>/dice`).

Scoring (`data.score_resolution`): `original`, PraNet's protocol, gives validation and test samples their mask at
the image's own size too (`full_mask`), and the module scores the prediction upsampled to it; `input` scores at
the training size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from vigil.core.augmentation import augmentation_pipeline
from vigil.core.data import TaskDataModule
from vigil.core.errors import ConfigError, DataError
from vigil.core.files import (
    IMAGE_SUFFIXES,
    IMAGENET,
    SPLITS,
    Normalization,
    OnError,
    RecordPolicy,
    check_split_fractions,
    image_input,
    image_size,
    is_image_file,
    open_image,
    read_json,
    resolve_under,
    seeded_split,
)
from vigil.core.guardrails import AuditReport
from vigil.tasks.segmentation.health import audit_splits
from vigil.tasks.segmentation.masking import SegmentationMasking
from vigil.tasks.segmentation.model import encoder_normalization
from vigil.tasks.segmentation.pil_mask import PILMask
from vigil.tasks.segmentation.records import (
    MaskEncoding,
    MaskFacts,
    MaskSpec,
    SegmentationBatch,
    SegmentationContext,
    SegmentationRecord,
)
from vigil.tasks.segmentation.synthetic import SyntheticSegmentation

ScoreResolution = Literal["original", "input"]


class SegmentationDataset(Dataset):
    """Reads, resizes, augments and normalises the records of one split; `full_masks` also keeps each mask at its
    own size."""

    def __init__(
        self,
        records: list[SegmentationRecord],
        spec: MaskSpec,
        size: tuple[int, int],
        augment: v2.Compose | None = None,
        full_masks: bool = False,
        normalization: Normalization = IMAGENET,
    ) -> None:
        self.records = records
        self.spec = spec
        self.size = size
        self.augment = augment
        self.full_masks = full_masks
        self.normalization = normalization

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        height, width = self.size
        original = open_image(record.image_path)
        image = original.resize((width, height), Image.BILINEAR)
        full_mask = None
        if record.annotated:
            raw = open_image(record.mask_path, "L")
            # Decoding is per pixel, so it commutes with nearest-neighbour resizing: decode the resized mask.
            mask = torch.from_numpy(self.spec.decode(np.asarray(raw.resize((width, height), Image.NEAREST))))
            if self.full_masks:
                full_mask = torch.from_numpy(self.spec.decode(np.asarray(raw)))
        else:
            mask = torch.zeros(height, width, dtype=torch.long)
            if self.full_masks:
                full_mask = torch.zeros(original.height, original.width, dtype=torch.long)
        if self.augment is not None:
            # On the PIL image: PIL's affine and colour kernels on 8-bit pixels take a third of the time of the
            # same transforms on a float tensor (7 vs 22 ms at 352 x 352), more than decoding the file.
            image, mask = augmented(self.augment, image, mask, self.spec.ignore_index)
        sample = {
            "image": image_input(image, self.normalization),
            "mask": mask,
            "annotated": record.annotated,
            "name": record.name,
        }
        if self.full_masks:
            sample["full_mask"] = full_mask
        return sample


def augmented(
    augment: v2.Compose, image: Image.Image | torch.Tensor, mask: torch.Tensor, ignore_index: int | None
) -> tuple[Image.Image | torch.Tensor, torch.Tensor]:
    """Image (a PIL image, or a CHW tensor) and mask through the same draw of the transforms; pixels a geometric
    transform brings in are background, or ignored when the data has an ignore index. The image comes back as
    it was given (PIL or tensor)."""
    pixels = image if isinstance(image, Image.Image) else tv_tensors.Image(image)
    # A PIL image's mask is moved by PIL's kernels too, a tensor's by the tensor kernels.
    as_mask = PILMask if isinstance(image, Image.Image) else tv_tensors.Mask
    if ignore_index is None:
        moved_image, moved = augment(pixels, as_mask(mask))
    else:
        # A mask of ones moved with them tells what the transform filled in.
        moved_image, moved, kept = augment(pixels, as_mask(mask), as_mask(mask * 0 + 1))
        moved = torch.where(kept.bool(), moved, ignore_index)
    if not isinstance(moved_image, Image.Image):
        moved_image = moved_image.as_subclass(torch.Tensor)
    return moved_image, moved.as_subclass(torch.Tensor)


def collate_segmentation(samples: list[dict[str, Any]]) -> SegmentationBatch:
    """Stack samples into a SegmentationBatch."""
    return SegmentationBatch(
        image=torch.stack([s["image"] for s in samples]),
        mask=torch.stack([s["mask"] for s in samples]),
        annotated=torch.tensor([s["annotated"] for s in samples], dtype=torch.bool),
        name=[s["name"] for s in samples],
        full_mask=[s["full_mask"] for s in samples] if "full_mask" in samples[0] else None,
    )


class SegmentationDataModule(TaskDataModule):
    """Kvasir-SEG, any image/mask folder pair, or the generated default (`synthetic` set)."""

    batch_type = SegmentationBatch
    synthetic_type = SyntheticSegmentation

    def __init__(
        self,
        root: str | None,
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
        num_workers: int | str = 0,
        pin_memory: bool | str = False,
        augment: list[Any] | None = None,
        on_error: OnError = "raise",
        class_names: list[str] | None = None,
        synthetic: dict[str, Any] | None = None,
        seed: int = 0,
        score_resolution: ScoreResolution = "original",
        roots: dict[str, str] | None = None,
        encoder: str | None = None,
        encoder_weights: str | None = None,
    ) -> None:
        if roots is not None and not roots:
            raise ConfigError("data.roots is empty: name at least one data set, e.g. {kvasir: /data/Kvasir-SEG}")
        if root is None and roots is None:
            raise ConfigError("no data: give data.root, or data.roots={name: folder, ...} for several data sets")
        super().__init__(root if roots is None else next(iter(roots.values())), batch_size, num_workers, pin_memory,
                         synthetic, seed)  # fmt: skip
        self.roots = {name: Path(folder) for name, folder in roots.items()} if roots is not None else None
        self.encoder, self.encoder_weights = encoder, encoder_weights
        self.normalization = IMAGENET
        if score_resolution not in ("original", "input"):
            raise ConfigError(f"data.score_resolution={score_resolution!r}: use original (PraNet's) or input")
        self.score_resolution = score_resolution
        if mask_encoding == "threshold" and num_classes != 1:
            raise ConfigError("data.mask_encoding=threshold masks are binary: use data.num_classes=1")
        self.spec = MaskSpec(num_classes, mask_encoding, mask_threshold, ignore_index)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.image_dir, self.mask_dir, self.unannotated_file = image_dir, mask_dir, unannotated_file
        self.split_file = split_file
        self.split_fractions = check_split_fractions(split_fractions)
        self.split_seed = split_seed
        self.augment = augmentation_pipeline(augment)
        self.on_error = on_error
        self.class_names = list(class_names) if class_names else default_class_names(num_classes)
        self.splits: dict[str, list[SegmentationRecord]] = {}
        self.facts: dict[str, list[MaskFacts]] = {}
        self.listing_warnings: list[str] = []
        self.skipped: dict[str, RecordPolicy] = {}
        self.test_sources: dict[str, list[SegmentationRecord]] = {}

    def read(self) -> None:
        """List, split and validate the records of every source; a bad record is raised or skipped and counted by
        policy. Training and validation take the union of the sources; each source's test set stays apart."""
        if self.encoder is not None:
            self.normalization = encoder_normalization(self.encoder, self.encoder_weights)
        self.test_sources = {}
        listed: dict[str, list[SegmentationRecord]] = {split: [] for split in SPLITS}
        for name, root in self.sources().items():
            for split, records in self.split_records(root, name).items():
                listed[split] += records
                if split == "test" and name is not None:
                    self.test_sources[name] = records
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
        kept_names = {record.name for record in self.splits["test"]}
        self.test_sources = {
            name: [record for record in records if record.name in kept_names]
            for name, records in self.test_sources.items()
        }

    def sources(self) -> dict[str | None, Path]:
        """The folders read, by name: `data.roots`, or the one unnamed root."""
        if self.roots is None:
            return {None: self.data_root}
        return dict(self.roots)

    def split_records(self, root: Path, source: str | None) -> dict[str, list[SegmentationRecord]]:
        """The records of one root, split by its own split file or by seed; named `<source>/<name>` when the run
        reads several."""
        records, warnings = list_records(root, self.image_dir, self.mask_dir, self.unannotated_file)
        self.listing_warnings += warnings
        if source is not None:
            records = [dataclasses.replace(record, name=f"{source}/{record.name}") for record in records]
        if self.split_file:
            return read_split_file(root, self.split_file, records)
        return seeded_split(records, self.split_fractions, self.split_seed, key=lambda r: r.name)

    def context(self) -> SegmentationContext:
        """The names of the test sets, one per test loader, when the run reads several data sets; the normalisation."""
        self.setup()
        return SegmentationContext(list(self.test_sources) if len(self.test_sources) > 1 else [], self.normalization)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """The test loader, or one per source when there are several (scored and logged apart)."""
        self.setup()
        if len(self.test_sources) < 2:
            return self.loader("test")
        return [self.loader_of("test", self.evaluation_dataset(records)) for records in self.test_sources.values()]

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
        """The Dataset of one split; augmentation only for training, masks at their own size for scoring."""
        self.setup()
        if split != "train":
            return self.evaluation_dataset(self.splits[split])
        return SegmentationDataset(
            self.splits[split], self.spec, self.image_size, self.augment, False, self.normalization
        )

    def evaluation_dataset(self, records: list[SegmentationRecord]) -> SegmentationDataset:
        """Records as scored: not augmented, with their own-size masks unless scoring at the input size."""
        full_masks = self.score_resolution == "original"
        return SegmentationDataset(records, self.spec, self.image_size, None, full_masks, self.normalization)

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
    """Check a record's image (its header: the pixels are decoded when loaded) and decode its mask once for the
    mask facts; DataError if bad."""
    size = image_size(record.image_path)
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
    if mask.size != size:
        raise DataError(
            record.mask_path,
            None,
            f"mask size {mask.size[0]}x{mask.size[1]} differs from image size {size[0]}x{size[1]}",
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
