"""The record types of image-caption data: what the readers produce and the audit, sampler and module read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from vigil.core.batch import Batch, meta, model_input, target
from vigil.core.files import RecordPolicy


@dataclass(frozen=True)
class Listing:
    """One image as an annotation file lists it, before its file is checked; `record` says where it is listed."""

    filename: str
    split: str
    captions: list[str]
    record: str


@dataclass(frozen=True)
class ImageRecord:
    """A checked image: its identity (`img_id`, from the file name), file, split and captions."""

    img_id: int
    filename: str
    path: Path
    split: str
    captions: tuple[str, ...]


@dataclass
class Catalog:
    """Every checked image of an annotation file, by split, and what the checks counted on the way."""

    file: Path
    splits: dict[str, list[ImageRecord]]
    policy: RecordPolicy
    merged_duplicates: int = 0
    empty_captions: int = 0
    unlisted_files: int = 0
    extra_splits: dict[str, int] = field(default_factory=dict)


@dataclass
class ContrastiveBatch(Batch):
    """Images and tokenised captions.

    Training batches are pairs: caption i describes image i (an image repeats when the sampler takes several of
    its captions). Evaluation batches hold each image once and all of its captions; `caption_img_id` says whose.
    """

    image_fields = ("image",)

    image: torch.Tensor = model_input()
    input_ids: torch.Tensor = model_input()
    attention_mask: torch.Tensor = model_input()
    img_id: torch.Tensor = target()
    caption_img_id: torch.Tensor = target()
    filename: list[str] = meta()
    caption: list[str] = meta()

    def __len__(self) -> int:
        """The number of captions (pairs, in a training batch)."""
        return self.input_ids.shape[0]


@dataclass(frozen=True)
class ContrastiveContext:
    """What the module needs from the data: the tokenizer and how captions are padded (to check them against
    the text tower) and the validation image files by image id (to draw retrieved images)."""

    tokenizer: PreTrainedTokenizerBase
    val_images: Mapping[int, Path]
    padding: str = "longest"
    max_length: int = 64
