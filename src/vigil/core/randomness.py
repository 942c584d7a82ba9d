"""The training process's random state: kept in every checkpoint, restored on resume, untouched by evaluation.

Lightning checkpoints hold the model, optimizer and loop state but not the generators dropout and augmentation
draw from, so a resumed run would continue on another random stream. NumPy's state is stored as a tensor:
checkpoints load with `weights_only`, which refuses NumPy arrays.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch


def random_state() -> dict[str, Any]:
    """The states of torch's (CPU, and CUDA once used), NumPy's and Python's global generators."""
    _, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_random_state(state: dict[str, Any]) -> None:
    """Put the global generators back in a state taken by `random_state()`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, numpy["position"], numpy["has_gauss"], numpy["gauss"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's (CPU), NumPy's and Python's global generators seeded by `seed`.

    torch's and Python's states are restored after. NumPy's is left as the block leaves it (a function of
    `seed`, so still reproducible): saving and restoring it costs 0.1 ms, more than many samples take to make,
    and nothing in vigil's training draws from it.
    """
    saved = torch.get_rng_state(), random.getstate()
    torch.default_generator.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        random.setstate(saved[1])


class RandomState(pl.Callback):
    """Stores the generators' state in every checkpoint and restores it when a resumed run starts training.

    Validation (the sanity check too) runs on a copy of the state: how often a run validates then never changes
    its training, and a run resumed after a validation continues where the uninterrupted one does.
    """

    def __init__(self) -> None:
        self.restored: dict[str, Any] | None = None
        self.held: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """The generators' state now (Lightning calls this when it writes a checkpoint)."""
        return random_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep a checkpoint's state until training starts (restoring goes on after this)."""
        self.restored = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Continue the checkpoint's random streams."""
        if self.restored is not None:
            set_random_state(self.restored)
            self.restored = None

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Hold the training state while validation runs."""
        self.held = random_state()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Give training its state back (before a checkpoint callback stores it)."""
        if self.held is not None:
            set_random_state(self.held)
            self.held = None
