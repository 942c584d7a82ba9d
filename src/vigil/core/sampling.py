"""Samplers shared by every task's DataModule."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Dataset, Sampler


def evaluation_sampler(dataset: Dataset) -> Sampler | None:
    """Under DDP, shard an evaluation set across ranks without padding, so every sample is scored exactly once.

    Lightning's default DistributedSampler repeats samples to even out the ranks, which biases val/test metrics.
    Outside DDP, None (sequential order).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return UnrepeatedDistributedSampler(dataset, shuffle=False)


class EpochShuffle(Sampler[int]):
    """A fresh random order of `size` indices each epoch, a function of `(seed, epoch)` alone.

    Unlike a RandomSampler, the order does not depend on the global random state, so a run resumed at epoch e
    sees the same order as the run that was never stopped. Lightning calls `set_epoch` (through its distributed
    wrapper under DDP, which then shards this order).
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(stream_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.size, generator=generator).tolist())


def stream_seed(*entropy: int) -> int:
    """A well-mixed 63-bit seed from a tuple of integers (seed, epoch, ...), the same in every process."""
    # BLAKE2 over the integers: a twentieth of NumPy's SeedSequence cost, and it is paid once per sample.
    digest = hashlib.blake2b(b",".join(b"%d" % value for value in entropy), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
