"""Image-caption data: Flickr30k's three annotation formats read into one list of images with their captions.

Under `data.root`: one annotation file and the `flickr30k-images/` folder.
- `dataset_flickr30k.json` (Karpathy): `images[]` with `filename`, `split`, `sentences[].raw`.
- `flickr_annotations_30k.csv`: one row per image; `raw` is a JSON list of captions, `split`, `filename`.
- `results_20130124.token`: `<file>#<n><TAB><caption>` lines; the split comes from `data.split_file` (a Karpathy
  file, or `{"train": [filenames], "val": [...], "test": [...]}`); images it does not list count as `unassigned`.

An image's identity is its file name, in every format: all captions of one image share it, whatever the order
of the records, and the integer `img_id` a batch carries is the image's rank among the sorted file names — never
a record's position. Split values other than train/val/test are counted in the audit when listed in
`data.extra_splits` (default `restval`) and are an error otherwise.

Images are preprocessed as the model expects (`preprocessing.py`): a joint checkpoint (`data.checkpoint`, the
model's) gives its processor's tokenizer and image preprocessing; otherwise the timm tower (`data.image_model`)
gives size, statistics and interpolation, and the text tower (`data.tokenizer`) the tokenizer.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from vigil.core.data import TaskDataModule
from vigil.core.errors import ConfigError, DataError
from vigil.core.files import SPLITS, OnError, RecordPolicy, is_image_file, open_image, read_json, resolve_under
from vigil.core.guardrails import AuditReport
from vigil.core.sampling import EpochShuffle
from vigil.core.tiny import ensure_wordpiece_tokenizer, load_tokenizer
from vigil.tasks.contrastive.health import audit_splits
from vigil.tasks.contrastive.masking import ContrastiveMasking
from vigil.tasks.contrastive.preprocessing import (
    ImagePreprocessing,
    ProcessorTransform,
    processor_preprocessing,
    timm_preprocessing,
)
from vigil.tasks.contrastive.pretrained import checkpoint_processor
from vigil.tasks.contrastive.records import Catalog, ContrastiveBatch, ContrastiveContext, ImageRecord, Listing
from vigil.tasks.contrastive.sampler import CaptionBatchSampler, SamplerName
from vigil.tasks.contrastive.synthetic import SyntheticCaptions

UNASSIGNED = "unassigned"
ANNOTATION_FILES = {
    "karpathy": "dataset_flickr30k.json",
    "csv": "flickr_annotations_30k.csv",
    "token": "results_20130124.token",
}
CSV_COLUMNS = ("raw", "split", "filename")
Format = Literal["auto", "karpathy", "csv", "token"]
Padding = Literal["longest", "max_length"]


class CaptionDataset(Dataset):
    """The images of one split. Key `i` gives image i with all its captions; `(i, c)` gives it with caption c."""

    def __init__(self, records: list[ImageRecord], transform: Any) -> None:
        self.records = records
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, caption = key if isinstance(key, tuple) else (key, None)
        record = self.records[index]
        return {
            "image": self.transform(open_image(record.path)),
            "captions": record.captions if caption is None else (record.captions[caption],),
            "img_id": record.img_id,
            "filename": record.filename,
        }


class CaptionCollate:
    """Stacks images and tokenises the captions of a list of samples into a ContrastiveBatch."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, padding: Padding = "longest") -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.padding = padding

    def __call__(self, samples: list[dict[str, Any]]) -> ContrastiveBatch:
        captions = [caption for sample in samples for caption in sample["captions"]]
        tokens = self.tokenizer(
            captions, padding=self.padding, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        # A tokenizer without an attention mask (SigLIP's) was trained attending to every position.
        attention_mask = tokens.get("attention_mask", torch.ones_like(tokens["input_ids"]))
        return ContrastiveBatch(
            image=torch.stack([sample["image"] for sample in samples]),
            input_ids=tokens["input_ids"],
            attention_mask=attention_mask,
            img_id=torch.tensor([sample["img_id"] for sample in samples]),
            caption_img_id=torch.tensor([sample["img_id"] for sample in samples for _ in sample["captions"]]),
            filename=[sample["filename"] for sample in samples],
            caption=captions,
        )


class ContrastiveDataModule(TaskDataModule):
    """Flickr30k in any of its three formats, or the generated default (`synthetic` set)."""

    batch_type = ContrastiveBatch
    synthetic_type = SyntheticCaptions

    def __init__(
        self,
        root: str,
        cache_dir: str,
        format: Format = "auto",
        annotation_file: str | None = None,
        image_dir: str = "flickr30k-images",
        split_file: str | None = None,
        extra_splits: Sequence[str] = ("restval",),
        image_size: int | None = None,
        checkpoint: str | None = None,
        tiny: dict[str, Any] | None = None,
        image_model: str | None = None,
        batch_size: int = 64,
        sampler: SamplerName = "unique_images",
        k: int = 2,
        num_workers: int | str = 0,
        pin_memory: bool | str = False,
        augment: bool = True,
        max_length: int = 64,
        padding: Padding = "longest",
        tokenizer: str | None = None,
        vocab_size: int = 2000,
        on_error: OnError = "raise",
        seed: int = 0,
        synthetic: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(root, batch_size, num_workers, pin_memory, synthetic, seed)
        if format not in ("auto", *ANNOTATION_FILES):
            raise ConfigError(f"data.format={format} is not a format; valid: auto, karpathy, csv, token")
        self.cache_dir = Path(cache_dir)
        self.format = format
        self.annotation_file = annotation_file
        self.image_dir = image_dir
        self.split_file = split_file
        self.extra_splits = tuple(extra_splits)
        if padding not in ("longest", "max_length"):
            raise ConfigError(f"data.padding={padding} is not a padding; valid: longest, max_length")
        self.image_size = image_size
        self.checkpoint = checkpoint
        self.tiny = tiny
        self.image_model = image_model
        self.padding = padding
        self.sampler = sampler
        self.k = k
        self.augment = augment
        self.max_length = max_length
        self.tokenizer_name = tokenizer
        self.vocab_size = vocab_size
        self.on_error = on_error
        self.catalog: Catalog | None = None
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.preprocessing: ImagePreprocessing | None = None
        self.evaluation_transform: Any = None

    def read(self) -> None:
        """Read and check the annotations; load the tokenizer and image preprocessing of the model."""
        path, detected = find_annotation_file(self.data_root, self.format, self.annotation_file)
        policy = RecordPolicy(self.on_error)
        listings = read_listings(path, detected, policy, self.data_root, self.split_file)
        self.catalog = build_catalog(path, listings, policy, self.data_root, self.image_dir, self.extra_splits)
        if self.checkpoint is not None:
            self.use_checkpoint(self.checkpoint)
            return
        if self.image_model is None:
            raise ConfigError("data.image_model and data.checkpoint are both null: name the model's image tower")
        self.preprocessing = timm_preprocessing(self.image_model, self.image_size)
        self.evaluation_transform = self.preprocessing.transform(training=False)
        name = self.tokenizer_name
        if name is None:
            captions = [c for record in self.catalog.splits["train"] for c in record.captions]
            name = str(ensure_wordpiece_tokenizer(self.cache_dir, captions, self.vocab_size))
        self.tokenizer = load_tokenizer(name)

    def use_checkpoint(self, checkpoint: str) -> None:
        """Tokenizer and image preprocessing from a joint checkpoint's processor; its image processor itself
        prepares the evaluation images."""
        processor = checkpoint_processor(checkpoint, self.cache_dir, self.tiny)
        self.tokenizer = processor.tokenizer
        self.preprocessing = processor_preprocessing(processor.image_processor, self.image_size, checkpoint)
        self.evaluation_transform = ProcessorTransform(processor.image_processor)

    def audit(self, masking: ContrastiveMasking) -> AuditReport:
        """The contrastive audit of the prepared splits (see `health.audit_splits`)."""
        self.setup()
        return audit_splits(self.catalog, masking, self.batch_sampler(self.catalog.splits["train"], shuffle=False))

    def context(self) -> ContrastiveContext:
        """The tokenizer, and the validation image files by id for the retrieval pictures."""
        self.setup()
        val_images = {r.img_id: r.path for r in self.catalog.splits["val"]}
        return ContrastiveContext(self.tokenizer, val_images, self.padding, self.max_length)

    def image_files(self, split: str) -> list[Path]:
        """The image files of `split`, for the preflight's leakage check."""
        self.setup()
        return [record.path for record in self.catalog.splits[split]]

    def dataset(self, split: str) -> CaptionDataset:
        """The Dataset of one split; augmentation only for training."""
        if self.augment and split == "train":
            return CaptionDataset(self.catalog.splits[split], self.preprocessing.transform(training=True))
        return CaptionDataset(self.catalog.splits[split], self.evaluation_transform)

    def collate(self, split: str) -> Callable[[list[dict[str, Any]]], ContrastiveBatch]:
        """Images stacked, captions tokenised (the same for every split)."""
        return CaptionCollate(self.tokenizer, self.max_length, self.padding)

    def training_batches(self, dataset: CaptionDataset) -> dict[str, Any]:
        """The caption batch sampler over a shuffled order of the training images."""
        return {"batch_sampler": self.batch_sampler(dataset.records, shuffle=True)}

    def batch_sampler(self, records: list[ImageRecord], shuffle: bool) -> CaptionBatchSampler:
        """The training batch sampler over `records`, shuffled afresh each epoch from `(seed, epoch)`."""
        sampler = EpochShuffle(len(records), self.seed) if shuffle else range(len(records))
        counts = [len(record.captions) for record in records]
        # A short last batch has few negatives (and breaks BatchNorm at one image): dropped when there are more.
        drop_last = len(records) > self.batch_size
        return CaptionBatchSampler(sampler, self.batch_size, drop_last, counts, self.sampler, self.k, self.seed)


def find_annotation_file(root: Path, format: Format, annotation_file: str | None) -> tuple[Path, str]:
    """The annotation file and its format: as configured, or the first standard file found under `root`."""
    if annotation_file:
        path = resolve_under(root, annotation_file, "config", "data.annotation_file")
        return path, format if format != "auto" else format_of(path)
    candidates = ANNOTATION_FILES if format == "auto" else {format: ANNOTATION_FILES[format]}
    for name, filename in candidates.items():
        if (root / filename).is_file():
            return root / filename, name
    raise DataError(
        root,
        None,
        f"no annotation file ({', '.join(candidates.values())})",
        "point data.root at the folder holding it, or set data.annotation_file",
    )


def format_of(path: Path) -> str:
    """The format an annotation file's suffix implies."""
    suffixes = {".json": "karpathy", ".csv": "csv", ".token": "token", ".txt": "token"}
    if path.suffix.lower() not in suffixes:
        raise DataError(path, None, "unknown annotation format", "set data.format to karpathy, csv or token")
    return suffixes[path.suffix.lower()]


def read_listings(path: Path, format: str, policy: RecordPolicy, root: Path, split_file: str | None) -> list[Listing]:
    """Parse an annotation file of `format`; bad records are raised or skipped by `policy`."""
    if not path.is_file():
        raise DataError(path, None, "annotation file not found", "fix data.root or data.annotation_file")
    if format == "karpathy":
        return read_karpathy(path, policy)
    if format == "csv":
        return read_csv(path, policy)
    if not split_file:
        raise DataError(path, None, "the token format carries no splits", "set data.split_file to a split list")
    return read_token(path, policy, read_split_map(resolve_under(root, split_file, "config", "data.split_file")))


def read_karpathy(path: Path, policy: RecordPolicy) -> list[Listing]:
    """The Karpathy split file: `{"images": [{"filename", "split", "sentences": [{"raw"}, ...]}, ...]}`."""
    data = read_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DataError(path, None, "no 'images' list", "is this a Karpathy split file (dataset_flickr30k.json)?")
    listings = []
    for index, item in enumerate(images):
        try:
            listings.append(karpathy_listing(path, f"images[{index}]", item))
        except DataError as error:
            policy.reject(error)
    return listings


def karpathy_listing(path: Path, where: str, item: Any) -> Listing:
    """One Karpathy image record, checked for shape."""
    if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
        raise DataError(path, where, "malformed record: no 'filename' string", "fix the record")
    sentences = item.get("sentences")
    if not isinstance(sentences, list):
        kind = type(sentences).__name__
        raise DataError(path, where, f"captions not a list: 'sentences' is {kind}", "make it a list of {'raw': ...}")
    captions = []
    for number, sentence in enumerate(sentences):
        raw = sentence.get("raw") if isinstance(sentence, dict) else None
        if not isinstance(raw, str):
            raise DataError(path, where, f"malformed caption: sentences[{number}] has no 'raw' text", "fix it")
        if "imgid" in sentence and "imgid" in item and sentence["imgid"] != item["imgid"]:
            raise DataError(
                path,
                where,
                f"caption of another image: sentences[{number}] has imgid {sentence['imgid']}, "
                f"the image {item['imgid']}",
                "regenerate the file; captions must be listed under their own image",
            )
        captions.append(raw)
    return Listing(item["filename"], str(item.get("split")), captions, where)


def read_csv(path: Path, policy: RecordPolicy) -> list[Listing]:
    """The `flickr_annotations_30k.csv` table: one row per image, `raw` a JSON list of its captions."""
    listings = []
    with path.open(newline="", encoding="utf-8") as handle:
        lines = CountedLines(handle)
        reader = csv.DictReader(lines, strict=True)
        try:
            missing = [column for column in CSV_COLUMNS if column not in (reader.fieldnames or [])]
            if missing:
                raise DataError(path, "line 1", f"missing column(s) {missing}", f"the header needs {list(CSV_COLUMNS)}")
            for row in reader:
                try:
                    listings.append(csv_listing(path, f"line {lines.count}", row))
                except DataError as error:
                    policy.reject(error)
        except csv.Error as error:
            raise DataError(path, f"line {lines.count}", f"malformed CSV: {error}", "fix the file") from None
    return listings


class CountedLines:
    """A file's lines, counting those handed out: csv's own `line_num` lags by one when a row fails to parse."""

    def __init__(self, handle: Iterator[str]) -> None:
        self.handle = handle
        self.count = 0

    def __iter__(self) -> CountedLines:
        return self

    def __next__(self) -> str:
        line = next(self.handle)
        self.count += 1
        return line


def csv_listing(path: Path, where: str, row: dict[str | None, Any]) -> Listing:
    """One CSV row, checked for shape."""
    if None in row or any(value is None for value in row.values()):
        raise DataError(path, where, "malformed row: wrong number of fields", "quote fields that contain commas")
    try:
        captions = json.loads(row["raw"])
    except json.JSONDecodeError as error:
        raise DataError(path, where, f"malformed captions: 'raw' is not JSON ({error.msg})", "fix the row") from None
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        kind = type(captions).__name__
        raise DataError(path, where, f"captions not a list: 'raw' holds {kind}", "make 'raw' a JSON list of strings")
    return Listing(row["filename"], row["split"], captions, where)


def read_split_map(path: Path) -> dict[str, str]:
    """filename -> split, from a Karpathy file or from `{"train": [filenames], "val": [...], "test": [...]}`."""
    if not path.is_file():
        raise DataError(path, None, "split file not found", "fix data.split_file")
    data = read_json(path)
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        return {
            item["filename"]: str(item.get("split"))
            for item in data["images"]
            if isinstance(item, dict) and isinstance(item.get("filename"), str)
        }
    if not isinstance(data, dict) or not all(isinstance(names, list) for names in data.values()):
        raise DataError(path, None, "not a split list", 'expected {"train": [filenames], "val": [...], ...}')
    return {str(name): split for split, names in data.items() for name in names}


def read_token(path: Path, policy: RecordPolicy, split_of: dict[str, str]) -> list[Listing]:
    """`results_20130124.token`: `<file>#<n><TAB><caption>` lines, grouped by file, in caption-number order."""
    captions: dict[str, dict[int, str]] = {}
    first_line: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            name, tab, caption = line.rstrip("\n").partition("\t")
            filename, hash_sign, index = name.rpartition("#")
            if not (tab and hash_sign and filename and index.isdigit()):
                error = DataError(
                    path, f"line {number}", "malformed line: expected '<image>#<n><TAB><caption>'", "fix the line"
                )
                policy.reject(error)
                continue
            first_line.setdefault(filename, number)
            captions.setdefault(filename, {})[int(index)] = caption.strip()
    return [
        Listing(name, split_of.get(name, UNASSIGNED), [texts[i] for i in sorted(texts)], f"line {first_line[name]}")
        for name, texts in captions.items()
    ]


def build_catalog(
    file: Path, listings: list[Listing], policy: RecordPolicy, root: Path, image_dir: str, extra_splits: tuple[str, ...]
) -> Catalog:
    """Check every listing (split, captions, file under the root) and give each image its identity."""
    checked: dict[str, tuple[Listing, Path]] = {}
    catalog = Catalog(file, {split: [] for split in SPLITS}, policy)
    for listing in listings:
        try:
            path = check_listing(file, listing, root, image_dir, extra_splits)
            if listing.filename in checked:
                merge_duplicate(file, checked, listing)
                catalog.merged_duplicates += 1
                continue
        except DataError as error:
            policy.reject(error)
            continue
        checked[listing.filename] = (listing, path)
    # Identity from the file: the rank of its name, the same whatever order the records come in.
    for img_id, filename in enumerate(sorted(checked)):
        listing, path = checked[filename]
        if listing.split not in SPLITS:
            catalog.extra_splits[listing.split] = catalog.extra_splits.get(listing.split, 0) + 1
            continue
        captions = tuple(caption for caption in listing.captions if caption.strip())
        catalog.empty_captions += len(listing.captions) - len(captions)
        catalog.splits[listing.split].append(ImageRecord(img_id, filename, path, listing.split, captions))
    catalog.unlisted_files = count_unlisted(root / image_dir, set(checked))
    return catalog


def check_listing(file: Path, listing: Listing, root: Path, image_dir: str, extra_splits: tuple[str, ...]) -> Path:
    """The listing's image file, after checking its split, captions and path; DataError if any is wrong."""
    known = (*SPLITS, *extra_splits, UNASSIGNED)
    if listing.split not in known:
        raise DataError(
            file,
            listing.record,
            f"unknown split: '{listing.split}' is not one of {', '.join(known[:-1])}",
            "fix the value, or add it to data.extra_splits to count it",
        )
    if not [caption for caption in listing.captions if caption.strip()]:
        raise DataError(file, listing.record, f"no captions: '{listing.filename}' has none", "add captions or drop it")
    path = resolve_under(root, Path(image_dir) / listing.filename, file, listing.record)
    if not path.is_file():
        raise DataError(
            file,
            listing.record,
            f"missing image file: {image_dir}/{listing.filename} not found",
            "add the image, or fix data.root / data.image_dir",
        )
    return path


def merge_duplicate(file: Path, checked: dict[str, tuple[Listing, Path]], listing: Listing) -> None:
    """A second record of the same file adds its captions to the first; in another split it is an error."""
    first, path = checked[listing.filename]
    if first.split != listing.split:
        raise DataError(
            file,
            listing.record,
            f"image in two splits: '{listing.filename}' is {listing.split} here, {first.split} at {first.record}",
            "an image must stay in one split; fix the split values",
        )
    merged = first.captions + [c for c in listing.captions if c not in first.captions]
    checked[listing.filename] = (Listing(first.filename, first.split, merged, first.record), path)


def count_unlisted(folder: Path, listed: set[str]) -> int:
    """Image files in `folder` that no checked record names (counted, not an error)."""
    if not folder.is_dir():
        return 0
    with os.scandir(folder) as entries:
        names = {e.name for e in entries if e.is_file() and is_image_file(e.name)}
    return len(names - listed)
