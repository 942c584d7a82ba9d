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

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
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
