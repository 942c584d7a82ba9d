"""Generated (synthetic) data sets: written once per parameter set, atomically, safe under DDP and sweeps.

A folder is keyed by what produced it: the spec's parameters and the source of the module that defines the
spec's type (where its writer lives), so a changed generator writes a new folder instead of serving a stale one.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Any

COMPLETE_MARKER = "synthetic.json"


@cache
def module_digest(module_name: str) -> str:
    """A digest of a module's source: the version of the code that writes a generated folder."""
    source = inspect.getsource(sys.modules[module_name])
    return hashlib.sha1(source.encode()).hexdigest()[:10]


def code_version(spec: Any) -> str:
    """The version of the code behind `spec`: the digest of the module that defines its type."""
    return module_digest(type(spec).__module__)


def synthetic_folder(base: Path, name: str, spec: Any) -> Path:
    """`base/<name>-<hash of spec and its code>`: changed parameters or a changed generator get a new folder."""
    key = {**asdict(spec), "code_version": code_version(spec)}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return Path(base) / f"{name}-{digest}"


def ensure_synthetic(base: Path, name: str, spec: Any, write: Callable[[Path, Any], None]) -> Path:
    """Return the data root for `spec`, first calling `write(folder, spec)` into a staging folder if needed.

    The staging folder is renamed into place only when complete, so a killed or concurrent writer never leaves
    half a data set behind; the marker file records the parameters and the code version.
    """
    root = synthetic_folder(base, name, spec)
    if (root / COMPLETE_MARKER).exists():
        return root
    staging = root.with_name(f"{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write(staging, spec)
    marker = {**asdict(spec), "code_version": code_version(spec)}
    (staging / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    try:
        staging.rename(root)
    except OSError:
        # Another process finished writing the same data set first; theirs is identical.
        shutil.rmtree(staging, ignore_errors=True)
    return root
