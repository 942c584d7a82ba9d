"""The training loader: it resumes mid-epoch, and each sample's augmentation is a function of its place in the run.

Lightning stores a loader's `state_dict()` in every checkpoint and hands it back on resume; the resumed epoch
then skips the batches already trained on (their indices only: nothing is read). torchdata's
StatefulDataLoader does this by forking torch's DataLoader internals; this subclass only keys the index stream,
so worker processes, pinning and Lightning's distributed-sampler injection stay torch's and Lightning's own.
It needs a sampler whose order is a function of `(seed, epoch)`: `EpochShuffle` and the task samplers are.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from vigil.core.randomness import seeded
from vigil.core.sampling import stream_seed


@dataclass(frozen=True)
class SampleKey:
    """A sampler's key for one training sample, with the seed its augmentation draws from."""

    key: Any
    seed: int


class SeededSamples(Dataset):
    """A training Dataset whose every sample is made under generators (torch, NumPy, Python's `random`, which
    timm's transforms use) seeded by its `SampleKey`.

    A sample's random flip or rotation is then the same whichever worker makes it and whether or not the run was
    resumed, and making it draws nothing from the training process's own random state (dropout keeps its
    stream). `seed` is the run's seed; the rank, epoch, batch and place in the batch are mixed in.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: SampleKey) -> Any:
        with seeded(key.seed):
            return self.dataset[key.key]


class ResumableLoader(DataLoader):
    """The training DataLoader of every task: `state_dict()` says where the epoch is, `load_state_dict()` makes the
    next iteration of that epoch continue there. Its dataset is a `SeededSamples`."""

    # (epoch, batches yielded in it); and a checkpoint's position, used by the next iteration of that epoch.
    position: tuple[int, int] = (0, 0)
    resume_at: tuple[int, int] | None = None
    iterations = 0

    def state_dict(self) -> dict[str, int]:
        """Where the current epoch is; Lightning stores it in every checkpoint."""
        epoch, batches = self.position
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a checkpoint's position (Lightning calls this on a mid-epoch resume)."""
        self.resume_at = (int(state["epoch"]), int(state["batches"]))

    def __iter__(self) -> Iterator[Any]:
        # A generator: torch's iterator is made at the first batch, after Lightning has set this epoch on the
        # sampler, so the order (and the indices workers prefetch) is this epoch's.
        epoch = self.current_epoch()
        done = self.resume_at[1] if self.resume_at is not None and self.resume_at[0] == epoch else 0
        self.resume_at = None
        self.iterations += 1
        self.position = (epoch, done)
        for batch in super().__iter__():
            self.position = (epoch, self.position[1] + 1)
            yield batch

    def current_epoch(self) -> int:
        """The epoch Lightning set on the sampler (through its distributed wrapper under DDP); without a sampler
        that keeps one (Lightning's sequential sampler under `overfit_batches`), the count of iterations."""
        for sampler in (getattr(self.batch_sampler, "sampler", None), self.sampler):
            epoch = getattr(sampler, "epoch", None)
            if epoch is not None:
                return int(epoch)
        return self.iterations

    @property
    def _index_sampler(self) -> Any:
        # torch's iterators take their batch indices from this (private, unchanged since torch 1.2) property:
        # keying them is the one change this loader makes to how torch loads.
        if self.batch_sampler is None:
            raise TypeError("ResumableLoader needs batches (batch_size or batch_sampler), not single samples")
        return KeyedBatches(self)


class KeyedBatches:
    """The batch index stream of one iteration of a ResumableLoader: the batches done skipped, each key seeded."""

    def __init__(self, loader: ResumableLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader.batch_sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        # Read now, not at the first batch: torch's worker iterator asks for its first indices at once.
        epoch, done = self.loader.position
        seed = self.loader.dataset.seed  # type: ignore[attr-defined]
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        batches = itertools.islice(self.loader.batch_sampler, done, None)  # type: ignore[arg-type]
        return (
            [SampleKey(key, stream_seed(seed, rank, epoch, number, place)) for place, key in enumerate(batch)]
            for number, batch in enumerate(batches, start=done)
        )
