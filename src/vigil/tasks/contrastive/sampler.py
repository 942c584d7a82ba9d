"""The training batch sampler: which images, and which of their captions, make up each batch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from torch.utils.data import BatchSampler, Sampler

from vigil.core.errors import ConfigError
from vigil.core.sampling import stream_seed

SamplerName = Literal["unique_images", "k_captions"]


class CaptionBatchSampler(BatchSampler):
    """Batches of (image, caption) keys from the image indices `sampler` yields.

    - `unique_images` (CLIP): `batch_size` images, each once, with one caption drawn afresh every epoch.
    - `k_captions` (ALBEF-style): `batch_size // k` images with k different captions each (drawn with
      replacement only for an image that has fewer than k), so every batch holds same-image positives.
    Under DDP, Lightning hands this sampler a DistributedSampler in place of `sampler`, so each rank batches its
    own shard of the images; batches keep a fixed size, which the cross-rank feature gather needs. The captions of
    an image are a function of `(seed, epoch, image)`: the same on every rank count and in a resumed run.
    """

    def __init__(
        self,
        sampler: Sampler[int] | Sequence[int],
        batch_size: int,
        drop_last: bool,
        caption_counts: Sequence[int],
        mode: SamplerName = "unique_images",
        k: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        if mode not in ("unique_images", "k_captions"):
            raise ConfigError(f"data.sampler={mode} is not a sampler; valid: unique_images, k_captions")
        if mode == "k_captions" and not 1 <= k <= batch_size:
            raise ConfigError(f"data.k={k} must be between 1 and data.batch_size={batch_size}")
        self.caption_counts = list(caption_counts)
        self.mode = mode
        self.k = k
        self.images_per_batch = batch_size if mode == "unique_images" else batch_size // k
        self.seed = seed

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        images: list[int] = []
        for index in self.sampler:
            images.append(index)
            if len(images) == self.images_per_batch:
                yield self.pairs(images)
                images = []
        if images and not self.drop_last:
            yield self.pairs(images)

    def __len__(self) -> int:
        full, rest = divmod(len(self.sampler), self.images_per_batch)
        return full + int(bool(rest) and not self.drop_last)

    def pairs(self, images: list[int]) -> list[tuple[int, int]]:
        """The (image, caption) keys of one batch."""
        k = 1 if self.mode == "unique_images" else self.k
        return [(i, caption) for i in images for caption in self.draw(i, k)]

    def draw(self, image: int, k: int) -> list[int]:
        """k caption indices of `image` for this epoch: distinct when it has enough."""
        count = self.caption_counts[image]
        # The epoch Lightning set on the image sampler (or its distributed wrapper); 0 for a plain sequence.
        epoch = getattr(self.sampler, "epoch", 0)
        generator = torch.Generator().manual_seed(stream_seed(self.seed, epoch, image))
        if count >= k:
            return torch.randperm(count, generator=generator)[:k].tolist()
        return torch.randint(count, (k,), generator=generator).tolist()
