"""What the preflight adds to each task's default run: `vigil-train task=<task>` on the embedded data, whole.

The run's wall time is measured around the command; the preflight's own seconds come from its `preflight.json`,
so one run gives both sides (the run without the preflight is the same run less those seconds: the checks leave
weights and random state as they found them, so what follows them is unchanged). Goal: at most 10%.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT, Row

NAME = "preflight"
TASKS = ("segmentation", "contrastive", "cape", "vqa")


def default_run(task: str) -> tuple[float, dict[str, Any]]:
    """Wall seconds of the default run of `task` (CPU, CSV logger) and its preflight.json."""
    script = Path(sys.executable).parent / "vigil-train"
    with tempfile.TemporaryDirectory(prefix="vigil-bench-preflight-") as run_dir:
        command = [str(script), f"task={task}", "trainer=cpu", "logger=csv", f"hydra.run.dir={run_dir}"]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}")
        return wall, json.loads((Path(run_dir) / "preflight.json").read_text())


def preflight_cost(args: Any) -> list[Row]:
    """Per task: the preflight's share of the default run, and its slowest check."""
    rows = []
    for task in args.preflight_tasks.split(","):
        if task not in TASKS:
            raise SystemExit(f"--preflight-tasks: {task} is not one of {', '.join(TASKS)}")
        print(f"[preflight] {task} default run ...", file=sys.stderr, flush=True)
        wall, report = default_run(task)
        seconds = float(report["seconds"])
        slowest = max(report["checks"], key=lambda check: check.get("seconds", 0.0))
        verdicts = ", ".join(f"{check['name']} {check['verdict']}" for check in report["checks"])
        slowest_note = f"slowest {slowest['name']} {slowest['seconds']:.1f} s"
        note = f"{seconds:.1f} s of a {wall:.0f} s run; {slowest_note}; {verdicts}"
        rows.append(Row(NAME, f"{task} preflight / run without it", seconds / (wall - seconds), "x", "<= 0.10", note))
    return rows
