"""Time from command to first training step: `vigil-train` on the embedded data, and the import it starts with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT, Row, median, spread

NAME = "startup"
ENTRY_MODULE = "vigil.core.run"
# Only the time to the first step is measured; one step and one validation batch shorten what follows it.
TRAIN_OVERRIDES = ["logger=csv", "++trainer.max_steps=1", "++trainer.limit_val_batches=1", "run_test=false"]


def train_command() -> list[str]:
    """The `vigil-train` console script beside this interpreter, else the module it runs."""
    script = Path(sys.executable).parent / "vigil-train"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vigil.train"]


def first_step_seconds() -> tuple[float, float]:
    """Run `vigil-train` once in a temporary run dir; (`first_step_seconds` from its run.json, wall seconds)."""
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as run_dir:
        command = [*train_command(), *TRAIN_OVERRIDES, f"hydra.run.dir={run_dir}"]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        record = json.loads((Path(run_dir) / "run.json").read_text())
    return float(record["first_step_seconds"]), wall


def import_seconds() -> tuple[float, str]:
    """Wall seconds of `python -c "import vigil.core.run"`, and its `-X importtime` report."""
    command = [sys.executable, "-X", "importtime", "-c", f"import {ENTRY_MODULE}"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, done.stderr


def heaviest_imports(report: str, top: int = 4) -> list[tuple[str, float]]:
    """The packages whose own modules cost most in an `-X importtime` report (self seconds, summed per package)."""
    totals: dict[str, float] = defaultdict(float)
    for line in report.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        # Self time, not cumulative: cumulative charges torch to whichever package happened to import it first.
        totals[parts[2].strip().split(".")[0]] += int(parts[0].rpartition(":")[2]) / 1e6
    return sorted(totals.items(), key=lambda item: item[1], reverse=True)[:top]


def bytecode_cached() -> bool:
    """Whether torch's modules have compiled bytecode; without it every import recompiles from source."""
    spec = find_spec("torch")
    if spec is None or spec.origin is None:
        return False
    return any((Path(spec.origin).parent / "__pycache__").glob("*.pyc"))


def startup(args: Any) -> list[Row]:
    """Median seconds from command to first training step and to import vigil's entry, over repeated runs."""
    imports, reports = zip(*(import_seconds() for _ in range(args.startup_runs)), strict=True)
    first_steps, walls = zip(*(first_step_seconds() for _ in range(args.startup_runs)), strict=True)
    first_step, imported = median(first_steps), median(imports)
    return [
        Row(
            NAME,
            "vigil-train -> first step",
            first_step,
            "s",
            note=f"runs {spread(first_steps, 1)}",
            samples=[*first_steps],
        ),
        Row(
            NAME, "vigil-train whole run (1 step)", median(walls), "s", note=" ".join(TRAIN_OVERRIDES), samples=[*walls]
        ),
        Row(NAME, f"import {ENTRY_MODULE}", imported, "s", note=import_note(reports[-1]), samples=[*imports]),
        Row(NAME, "import share of first step", imported / first_step, "x"),
    ]


def import_note(report: str) -> str:
    """Whether bytecode was cached, and the packages whose modules took the most time to import."""
    cache = "bytecode cached" if bytecode_cached() else "no bytecode cache"
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        cache += " (PYTHONDONTWRITEBYTECODE set)"
    heavy = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in heaviest_imports(report))
    return f"{cache}; most self time: {heavy}"
