"""Images at the size the processor will resize them to, decoded and jittered there rather than at full size.

A Kvasir-VQA image is 720 x 576 or larger and the processor shrinks it to a few hundred pixels (LLaVA's CLIP
processor to its shortest edge, Qwen2-VL's to a multiple of its patch grid within its pixel budget); colour jitter
and the processor's own work on the full-resolution image cost more than the rest of the loader. JPEG files are
decoded at a reduced scale (`Image.draft`) no smaller than that size, then resized to it: the processor then sees
an image of the size it would have made itself, so its output shape (and the number of image tokens) is the one
the audit counted from the file's size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from vigil.core.files import open_image


def processor_size(image_processor: Any, size: tuple[int, int]) -> tuple[int, int] | None:
    """The (width, height) the processor resizes an image of `size` to; None when it does not say."""
    width, height = size
    if hasattr(image_processor, "merge_size") and hasattr(image_processor, "patch_size"):
        limits = image_processor.size
        factor = image_processor.patch_size * image_processor.merge_size
        resized = smart_resize(height, width, factor, limits["shortest_edge"], limits["longest_edge"])
        return resized[1], resized[0]
    shortest = (getattr(image_processor, "size", None) or {}).get("shortest_edge")
    if not shortest:
        return None
    scale = shortest / min(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def open_for_processor(path: Path, image_processor: Any, record: object | None = None) -> Image.Image:
    """The image of `path` decoded and resized to the size the processor would resize it to (never enlarged)."""
    with Image.open(path) as header:
        target = processor_size(image_processor, header.size)
    image = open_image(path, record=record, draft=target)
    if target is None or (target[0] >= image.width and target[1] >= image.height):
        return image
    return image.resize(target, Image.BICUBIC)


class DecodedImages:
    """Images opened with `open_for_processor`, kept in memory until they fill `budget_bytes`.

    A file is then decoded once per run rather than once per record and epoch (a training epoch of the embedded
    data opens each image about five times; Kvasir-VQA asks nine questions of each). The images handed out are
    shared: callers make new ones (colour jitter, the processor) and never draw on them.
    """

    def __init__(self, image_processor: Any, budget_bytes: int) -> None:
        self.image_processor = image_processor
        self.budget_bytes = budget_bytes
        self.kept: dict[Path, Image.Image] = {}
        self.kept_bytes = 0

    def __call__(self, path: Path, record: object | None = None) -> Image.Image:
        """The image of `path` at the processor's size, decoded on first use."""
        image = self.kept.get(path)
        if image is not None:
            return image
        image = open_for_processor(path, self.image_processor, record)
        size = image.width * image.height * len(image.getbands())
        if self.kept_bytes + size <= self.budget_bytes:
            self.kept[path] = image
            self.kept_bytes += size
        return image
