"""Reading data files the same way in every task: paths under the root, images, JSON and JSONL, record
policies, seeded splits, pixel statistics.

Every failure is a DataError naming the file and, where there is one, the line; nothing here skips silently.
"""

from __future__ import annotations

import functools
import json
import random
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import timm
import torch
from PIL import Image, UnidentifiedImageError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from vigil.core.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
# The image files every reader accepts, compared lower-cased.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

T = TypeVar("T")
OnError = Literal["raise", "skip"]


def is_image_file(path: Path | str) -> bool:
    """Whether the file name has one of the accepted image suffixes."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def open_image(
    path: Path, mode: str | None = "RGB", record: object | None = None, draft: tuple[int, int] | None = None
) -> Image.Image:
    """Open and fully decode an image, converted to `mode` (None keeps the file's own).

    `draft` (width, height) lets a JPEG be decoded at a reduced scale no smaller than that size, which is several
    times faster when the image is to be shrunk anyway. A corrupt file is a DataError naming the file and, when
    given, the `record` that lists it.
    """
    try:
        with Image.open(path) as image:
            if draft is not None and image.format == "JPEG":
                image.draft(mode or image.mode, draft)
            image.load()
            return image.convert(mode) if mode else image.copy()
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        raise DataError(path, record, f"cannot be decoded as an image: {error}", "replace or remove the file") from None


def image_size(path: Path, record: object | None = None) -> tuple[int, int]:
    """An image's (width, height) from its file's header, without decoding its pixels.

    A file that is not an image is a DataError as in `open_image`; damage past the header is found when the
    pixels are decoded.
    """
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        raise DataError(path, record, f"cannot be decoded as an image: {error}", "replace or remove the file") from None


@dataclass(frozen=True)
class Normalization:
    """How a pretrained network expects its input: pixels in [0, 1] scaled to `input_range`, then per-channel
    `(x - mean) / std` (smp's and timm's pretrained settings)."""

    mean: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_MEAN)
    std: tuple[float, float, float] = tuple(IMAGENET_DEFAULT_STD)
    input_range: tuple[float, float] = (0.0, 1.0)

    def stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std as (3, 1, 1) tensors of `like`'s dtype and device."""
        return torch.tensor(self.mean).view(3, 1, 1).to(like), torch.tensor(self.std).view(3, 1, 1).to(like)


IMAGENET = Normalization()


def timm_normalization(model_name: str) -> Normalization:
    """The statistics of a timm model's pretrained config (read offline, no weights); ImageNet's when it has
    none."""
    config = timm.get_pretrained_cfg(model_name)
    if config is None or config.mean is None:
        return IMAGENET
    return Normalization(tuple(config.mean), tuple(config.std))


def normalize(pixels: torch.Tensor, normalization: Normalization = IMAGENET) -> torch.Tensor:
    """CHW (or NCHW) pixels in [0, 1] to the network's input values (ImageNet statistics unless given)."""
    low, high = normalization.input_range
    mean, std = normalization.stats(pixels)
    return (pixels * (high - low) + low - mean) / std


def image_input(image: Image.Image, normalization: Normalization = IMAGENET) -> torch.Tensor:
    """An 8-bit RGB image as the network's CHW float input: `normalize` of its pixels in [0, 1], as one scale and
    shift per channel (a quarter of the time of the steps one by one, which a loader pays per sample)."""
    low, high = normalization.input_range
    mean, std = (torch.tensor(values).view(3, 1, 1) for values in (normalization.mean, normalization.std))
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
    scaled = torch.empty(pixels.shape, dtype=torch.float32).copy_(pixels)
    return scaled.mul_((high - low) / 255 / std).add_((low - mean) / std)


def denormalize(pixels: torch.Tensor, normalization: Normalization = IMAGENET) -> torch.Tensor:
    """Normalised pixels back to [0, 1] (for pictures)."""
    low, high = normalization.input_range
    mean, std = normalization.stats(pixels)
    return ((pixels * std + mean - low) / (high - low)).clamp(0, 1)


def read_json(path: Path, missing: str = "check data.root") -> Any:
    """Parse a JSON file; a missing file or malformed JSON is a DataError naming the file and line."""
    if not path.is_file():
        raise DataError(path, None, "file not found", missing)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(
            path, f"line {error.lineno}", f"malformed JSON: {error.msg}", "fix or re-download the file"
        ) from None
    except UnicodeDecodeError as error:
        raise DataError(path, None, f"not UTF-8 text: {error.reason}", "re-save the file as UTF-8") from None


def jsonl_lines(path: Path, missing: str = "check data.root") -> Iterator[tuple[int, str]]:
    """Yield `(line number, text)` for each non-empty line of a JSONL file; a missing file is a DataError.

    Parsing is the caller's (with `parse_json_line`), so a bad line can be rejected by a skip policy and reading
    goes on with the next.
    """
    if not path.is_file():
        raise DataError(path, None, "file not found", missing)
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, line


def parse_json_line(path: Path, number: int, line: str) -> Any:
    """One JSONL line as an object; malformed JSON is a DataError naming the file and line."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as error:
        raise DataError(path, f"line {number}", f"malformed JSON: {error.msg}", "fix the line") from None


def check_split_fractions(fractions: Sequence[float], where: str = "data.split_fractions") -> tuple[float, ...]:
    """Three non-negative fractions (train, val, test) summing to 1, else a ConfigError."""
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1) > 1e-6:
        raise ConfigError(f"{where}={list(values)} must be three non-negative fractions summing to 1")
    return values


def seeded_split(
    items: Sequence[T], fractions: Sequence[float], seed: int, key: Callable[[T], Hashable] | None = None
) -> dict[str, list[T]]:
    """Train/val/test: items sorted by `key`, shuffled with `seed`, cut at the fractions (which must sum to 1).

    Sorting first makes the split depend on the items, not on the order a directory listing returned them.
    """
    train, val, _ = check_split_fractions(fractions)
    ordered = sorted(items, key=key)
    random.Random(seed).shuffle(ordered)
    n_train = round(len(ordered) * train)
    n_val = round(len(ordered) * val)
    return {
        "train": ordered[:n_train],
        "val": ordered[n_train : n_train + n_val],
        "test": ordered[n_train + n_val :],
    }


@functools.lru_cache(maxsize=64)
def resolved_root(root: Path) -> Path:
    """`root` resolved once per process: every record of a data set is checked against the same root."""
    return root.resolve()


def resolve_under(root: Path, relative: str | Path, file: object, record: object) -> Path:
    """Resolve a path read from `file` under `root`; a path that escapes the root is a DataError."""
    root = resolved_root(Path(root))
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root):
        raise DataError(file, record, f"path '{relative}' escapes the data root {root}", "fix the path in the file")
    return candidate


@dataclass
class RecordPolicy:
    """Applies `data.on_error`: raise the first DataError, or skip the record and count why."""

    on_error: OnError = "raise"
    skipped: list[DataError] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"data.on_error must be 'raise' or 'skip', got {self.on_error!r}")

    def reject(self, error: DataError) -> None:
        """Raise `error`, or remember it as a skipped record."""
        if self.on_error == "raise":
            raise error
        self.skipped.append(error)

    def skipped_by_reason(self) -> dict[str, int]:
        """How many records were skipped, by what was wrong with them."""
        return dict(Counter(error.what.split(":")[0] for error in self.skipped))
