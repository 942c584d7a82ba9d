"""The DataModule base every task subclasses: embedded default or `data.root`, prepared once, set up once,
one loader rule for every split, and the audit hook.

A task fills in four things: `read()` (parse its on-disk format), `dataset(split)`, `collate(split)` and
`audit(masking)`; optionally `training_batches(dataset)` for its own sampler, `context()` for what its
LightningModule needs from the data and `image_files(split)` for the preflight's leakage check.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from vigil.core.batch import Batch
from vigil.core.config import unpacks
from vigil.core.errors import ConfigError
from vigil.core.guardrails import AuditReport
from vigil.core.loading import ResumableLoader, SeededSamples
from vigil.core.sampling import EpochShuffle, evaluation_sampler
from vigil.core.synthetic import ensure_synthetic, synthetic_folder

# `auto` workers leave one core of each rank's share to the training process; more than this many rarely pays.
MAX_AUTO_WORKERS = 8


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity, which a scheduler or container may restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def local_ranks() -> int:
    """Processes training on this machine: the launcher's LOCAL_WORLD_SIZE, else one per visible GPU, else one."""
    if "LOCAL_WORLD_SIZE" in os.environ:
        return max(1, int(os.environ["LOCAL_WORLD_SIZE"]))
    return max(1, torch.cuda.device_count())


def resolve_workers(num_workers: int | str) -> int:
    """`data.num_workers`: a count, or `auto`: this rank's share of the machine's CPUs less one, at most
    MAX_AUTO_WORKERS (0 when the share is a single CPU)."""
    if num_workers == "auto":
        return max(0, min(MAX_AUTO_WORKERS, available_cpus() // local_ranks() - 1))
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError(f"data.num_workers={num_workers!r}: give a count (0 loads in the training process) or auto")
    return num_workers


def resolve_pin_memory(pin_memory: bool | str) -> bool:
    """`data.pin_memory`: true, false, or `auto`: pinned when a CUDA device is there to copy batches to."""
    if pin_memory == "auto":
        return torch.cuda.is_available()
    if not isinstance(pin_memory, bool):
        raise ConfigError(f"data.pin_memory={pin_memory!r}: give true, false or auto")
    return pin_memory


class SyntheticSpec(Protocol):
    """The parameters of a generated data set; it writes itself in the task's real on-disk format."""

    name: ClassVar[str]

    def write(self, root: Path) -> None:
        """Write the data set under `root`, in the same format the real loader reads."""


class TaskDataModule(pl.LightningDataModule, ABC):
    """Base of the task DataModules.

    `root` is a real data set, or, with `synthetic` parameters, the cache folder under which the embedded default
    is generated (its own folder per parameter set). `batch_type` declares the batch the loaders yield; the
    run checks the model against it before training.
    """

    batch_type: ClassVar[type[Batch]]
    synthetic_type: ClassVar[type[SyntheticSpec] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # `data.synthetic` is unpacked into the spec: its keys are checked with the rest of the config.
        if cls.synthetic_type is not None:
            unpacks(synthetic=cls.synthetic_type)(cls)

    def __init__(
        self,
        root: str | Path,
        batch_size: int,
        num_workers: int | str = 0,
        pin_memory: bool | str = False,
        synthetic: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if synthetic and self.synthetic_type is None:
            raise TypeError(f"{type(self).__name__} declares no synthetic_type, so data.synthetic cannot be used")
        self.root = Path(root)
        self.batch_size = batch_size
        self.num_workers = resolve_workers(num_workers)
        self.pin_memory = resolve_pin_memory(pin_memory)
        self.synthetic: SyntheticSpec | None = self.synthetic_type(**synthetic) if synthetic else None
        # Training order and augmentation draw from this (and the epoch), never from the global random state.
        self.seed = seed
        self.is_set_up = False

    @property
    def data_root(self) -> Path:
        """The folder actually read: `root`, or the generated data set's folder under it."""
        if self.synthetic is None:
            return self.root
        return synthetic_folder(self.root, self.synthetic.name, self.synthetic)

    def prepare_data(self) -> None:
        """Write the generated data set when it is missing; atomic, so every rank and sweep job may call it."""
        if self.synthetic is not None:
            ensure_synthetic(self.root, self.synthetic.name, self.synthetic, lambda folder, spec: spec.write(folder))

    def setup(self, stage: str | None = None) -> None:
        """Read the data once (`read()`); later calls, from any stage, reuse it."""
        if self.is_set_up:
            return
        self.read()
        self.is_set_up = True

    @abstractmethod
    def read(self) -> None:
        """Parse and check the on-disk data of every split (called once, by `setup`)."""

    @abstractmethod
    def dataset(self, split: str) -> Dataset:
        """The Dataset of one split (augmented only for training)."""

    @abstractmethod
    def collate(self, split: str) -> Callable[[list[Any]], Batch]:
        """The function that turns a list of samples of `split` into a `batch_type` batch."""

    @abstractmethod
    def audit(self, masking: Any) -> AuditReport:
        """Facts about the prepared splits that predict a silent failure under `masking`."""

    def context(self) -> Any:
        """What the task's LightningModule needs from the data (tokenizer, names, baselines); None by default."""
        return None

    def image_files(self, split: str) -> list[Path]:
        """The image files of `split`, for the preflight's check of duplicates across splits; none by default."""
        return []

    def training_batches(self, dataset: Dataset) -> dict[str, Any]:
        """How training batches are drawn: shuffled afresh each epoch from `(seed, epoch)`, and a short last batch
        dropped when there are more.

        A last batch of one sample breaks BatchNorm, and a short one weighs its few samples like a full batch.
        Tasks with their own sampler return `sampler=` or `batch_sampler=` instead; its order must be a function
        of the seed and the epoch, so that a resumed run continues the same epoch.
        """
        size = len(dataset)  # type: ignore[arg-type]
        return {
            "batch_size": self.batch_size,
            "sampler": EpochShuffle(size, self.seed),
            "drop_last": size > self.batch_size,
        }

    def loader(self, split: str) -> DataLoader:
        """The DataLoader of `split`; val and test score every sample exactly once, in order, on every rank count.

        Training uses a ResumableLoader (mid-epoch resume, seeded augmentation) whose workers persist across
        epochs; evaluation loaders start theirs at each pass and end them after it, so no idle worker holds memory
        through training. Every loader has a generator of its own, so making its iterator (which draws the worker
        seeds) leaves the global random state alone.
        """
        self.setup()
        return self.loader_of(split, self.dataset(split))

    def loader_of(self, split: str, dataset: Dataset) -> DataLoader:
        """The DataLoader of `dataset`, by the rule of `split` (see `loader`)."""
        options = {
            "collate_fn": self.collate(split),
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": split == "train" and self.num_workers > 0,
            "generator": torch.Generator().manual_seed(self.seed),
        }
        if split == "train":
            return ResumableLoader(SeededSamples(dataset, self.seed), **self.training_batches(dataset), **options)
        sampler = evaluation_sampler(dataset)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, sampler=sampler, **options)

    def train_dataloader(self) -> DataLoader:
        """The training loader."""
        return self.loader("train")

    def val_dataloader(self) -> DataLoader:
        """The validation loader."""
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        """The test loader."""
        return self.loader("test")
