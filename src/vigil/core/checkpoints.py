"""Opening checkpoints safely: tensors and plain containers only, unless the user trusts the file.

`torch.load(weights_only=True)` refuses any pickled object outside PyTorch's allow-list, so a checkpoint
someone shares cannot run code on the machine that opens it. Every vigil checkpoint loads that way; a file
that needs more is refused in one line, and `trust_checkpoint=true` is the explicit opt-in.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only
from torch import nn

from vigil.core.errors import CheckpointError, OutputError

TRUST_HINT = "open it only if you trust where it came from, with trust_checkpoint=true"
log = logging.getLogger(__name__)


def load_checkpoint(path: Path, trust: bool = False) -> dict[str, Any]:
    """The checkpoint's contents, loaded on CPU; untrusted files may hold tensors and plain containers only."""
    with refusing_untrusted(path):
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trust)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: holds a {type(checkpoint).__name__}, not a checkpoint dictionary")
    return checkpoint


@contextlib.contextmanager
def refusing_untrusted(path: Path | str) -> Iterator[None]:
    """Turn the refusal of `weights_only` loading into one CheckpointError line naming the file."""
    try:
        yield
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))
        what = f"it stores {found.group(1)}" if found else "it stores objects outside the allow-list"
        message = f"{path}: refused: loading it needs arbitrary unpickling ({what}); {TRUST_HINT}"
        raise CheckpointError(message) from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it and renames it into place.

    A kill during the write leaves the previous checkpoint intact: the file is either the old one or the new one.
    (Lightning's own save stages in the system's temporary folder, and a move across file systems is a copy.)
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Save `checkpoint` to `path` atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with staging.open("wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(staging, path)
        finally:
            staging.unlink(missing_ok=True)


def unreadable_reason(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be read (truncated, corrupt, empty), or None when it can.

    A file that reads but needs trust is readable here; whether to open it is decided when it is loaded.
    """
    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "an empty file"
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        return None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"truncated or corrupt ({first})"
    return None


def newest_readable(candidates: list[Path]) -> Path:
    """The first of `candidates` that reads, saying in one line each why an earlier one was passed over."""
    for candidate in candidates:
        reason = unreadable_reason(candidate)
        if reason is None:
            return candidate
        log.warning("%s: checkpoint is %s; looking for an earlier one", candidate, reason)
    listed = ", ".join(str(c) for c in candidates)
    raise CheckpointError(f"no readable checkpoint to resume from among {listed} (start afresh without resume=)")


# A checkpoint holds the weights and, for Adam-style optimizers, two moments per trained weight.
OPTIMIZER_COPIES = 2


def checkpoint_bytes(model: nn.Module) -> int:
    """An estimate of one checkpoint's size: every weight, plus the optimizer's moments of the trained ones."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return weights + buffers + OPTIMIZER_COPIES * trained


def check_checkpoint_folder(folder: Path, model: nn.Module) -> None:
    """Before fit: the checkpoint folder can be written and its disk has room for one checkpoint, else one line."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise OutputError(
            f"{folder}: checkpoints cannot be written there ({error.strerror or error}); "
            "choose another callbacks.model_checkpoint.dirpath or paths.output_root"
        ) from None
    needed, free = checkpoint_bytes(model), shutil.disk_usage(folder).free
    if free < needed:
        raise OutputError(
            f"{folder}: {free / 2**20:.0f} MiB free, one checkpoint needs about {needed / 2**20:.0f} MiB "
            "(free space, or choose another callbacks.model_checkpoint.dirpath)"
        )


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint with two differences a resumable run needs.

    - `every_n_train_steps` refreshes `last.ckpt` only, the resume point: the best checkpoint is still chosen at
      every validation by the monitor, never from a validation score of other weights.
    - A run resumed into a new run directory carries the best checkpoint over and keeps comparing against its
      score (Lightning forgets both when the folder changes), so it selects what the uninterrupted run selects.
    """

    def __init__(self, *, every_n_train_steps: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.resume_every_n_train_steps = every_n_train_steps or 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Every `every_n_train_steps` optimizer steps, write `last.ckpt`."""
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        steps = self.resume_every_n_train_steps
        if not steps or trainer.global_step % steps or not self.save_last:
            return
        if self._should_skip_saving_checkpoint(trainer):
            return
        saved_at = self._last_global_step_saved
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        # A resume point is not a validated checkpoint: a validation at this same step still saves the best.
        self._last_global_step_saved = saved_at

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the best-so-far, moved into this run's folder when the run was resumed into a new one."""
        previous = state_dict.get("dirpath")
        if previous and self.dirpath and Path(previous) != Path(self.dirpath):
            state_dict = self.carried_over(state_dict, Path(previous), Path(self.dirpath))
        super().load_state_dict(state_dict)

    @staticmethod
    def carried_over(state: dict[str, Any], previous: Path, current: Path) -> dict[str, Any]:
        """`state` with its kept checkpoints copied from `previous` into `current` and its paths pointing there."""

        def moved(path: str) -> str:
            if not path or Path(path).parent != previous:
                return path
            target = current / Path(path).name
            if Path(path).is_file() and not target.exists() and rank_zero_only.rank == 0:
                current.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
            return str(target)

        best_k = {moved(path): score for path, score in state.get("best_k_models", {}).items()}
        return {
            **state,
            "dirpath": str(current),
            "best_model_path": moved(state.get("best_model_path", "")),
            "kth_best_model_path": moved(state.get("kth_best_model_path", "")),
            "best_k_models": best_k,
            "last_model_path": "",
        }
