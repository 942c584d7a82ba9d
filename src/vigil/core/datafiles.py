"""Safety for paths and records read from data files: stay under the data root, raise or skip by policy."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vigil.core.errors import DataError

OnError = Literal["raise", "skip"]


def resolve_under(root: Path, relative: str | Path, file: object, record: object) -> Path:
    """Resolve a path read from `file` under `root`; a path that escapes the root is a DataError."""
    root = Path(root).resolve()
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root):
        raise DataError(file, record, f"path '{relative}' escapes the data root {root}", "fix the path in the file")
    return candidate


@dataclass
class RecordPolicy:
    """Applies `data.on_error`: raise the first DataError, or skip the record and count why."""

    on_error: OnError = "raise"
    skipped: list[DataError] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"data.on_error must be 'raise' or 'skip', got {self.on_error!r}")

    def reject(self, error: DataError) -> None:
        """Raise `error`, or remember it as a skipped record."""
        if self.on_error == "raise":
            raise error
        self.skipped.append(error)

    def skipped_by_reason(self) -> dict[str, int]:
        """How many records were skipped, by what was wrong with them."""
        return dict(Counter(error.what.split(":")[0] for error in self.skipped))
