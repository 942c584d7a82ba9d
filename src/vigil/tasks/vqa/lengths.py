"""Training batches of similar sequence length: a batch is padded to its longest sequence, and a VQA training set
mixes one-question records with multi-turn conversations, so a random batch pads most of its rows far."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from transformers.trainer_pt_utils import get_length_grouped_indices

from vigil.core.sampling import EpochShuffle, stream_seed
from vigil.tasks.vqa.health import ImageSegments
from vigil.tasks.vqa.prompts import PromptEncoder
from vigil.tasks.vqa.records import VQARecord


class LengthGroupedShuffle(EpochShuffle):
    """EpochShuffle's fresh order each epoch, a function of `(seed, epoch)` alone, in which every run of
    `batch_size` indices holds samples of about the same length: transformers' `group_by_length` grouping (a
    random order cut into mega-batches of up to 50 batches, each sorted by length, the longest batch first).

    Under DDP Lightning's distributed wrapper shards this order, so each rank's batches are still of similar length.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0) -> None:
        super().__init__(len(lengths), seed)
        self.lengths = list(lengths)
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(stream_seed(self.seed, self.epoch))
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


def training_lengths(records: Sequence[VQARecord], encoder: PromptEncoder, max_length: int) -> list[int]:
    """The token count of each training record's whole sequence (image tokens included), as the dataset cuts it;
    images are not decoded (their sizes come from the file headers)."""
    segments = ImageSegments(encoder)
    return [min(len(encoder.encode(segments(r), r.turns).input_ids), max_length) for r in records]
