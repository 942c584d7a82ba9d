"""Generated (synthetic) data sets: written once per parameter set, atomically, safe under DDP and sweeps."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

COMPLETE_MARKER = "synthetic.json"


def synthetic_folder(base: Path, name: str, spec: Any) -> Path:
    """`base/<name>-<hash of spec>`: changed parameters get a new folder instead of stale data."""
    digest = hashlib.sha1(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:10]
    return Path(base) / f"{name}-{digest}"


def ensure_synthetic(base: Path, name: str, spec: Any, write: Callable[[Path, Any], None]) -> Path:
    """Return the data root for `spec`, first calling `write(folder, spec)` into a staging folder if needed.

    The staging folder is renamed into place only when complete, so a killed or concurrent writer never leaves
    half a data set behind; the marker file records the parameters.
    """
    root = synthetic_folder(base, name, spec)
    if (root / COMPLETE_MARKER).exists():
        return root
    staging = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write(staging, spec)
    (staging / COMPLETE_MARKER).write_text(json.dumps(asdict(spec), indent=2) + "\n")
    try:
        staging.rename(root)
    except OSError:
        # Another process finished writing the same data set first; theirs is identical.
        shutil.rmtree(staging, ignore_errors=True)
    return root
