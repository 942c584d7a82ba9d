"""Sweeps that survive: a failed job is recorded and the next one starts; DDP jobs get their own overrides; the
multirun ends with a summary and a non-zero exit when any job failed."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict, read_write

from vigil.core.errors import vigil_cause


def in_multirun() -> bool:
    """Whether this process is a job of a Hydra multirun (`-m`)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def failure_reason(error: BaseException) -> str:
    """One line saying why a job stopped: the error's type and the first line of its message (of the VigilError
    behind it, when Hydra's instantiate wrapped one)."""
    error = vigil_cause(error) or error
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0]}" if message else type(error).__name__


def hand_job_overrides_to_ranks(output_dir: Path) -> None:
    """Make the DDP ranks Lightning starts for a multirun job run that job, in its directory.

    Lightning starts each rank with this process's `sys.argv` and `hydra.run.dir`; in a multirun those are the
    whole sweep (`-m loss=dice,bce`) and a fresh timestamped folder, so every rank would start the sweep again.
    """
    if not in_multirun():
        return
    hydra = HydraConfig.get()
    sys.argv = [sys.argv[0], *hydra.overrides.task]
    with read_write(hydra), open_dict(hydra):
        hydra.run.dir = str(output_dir)


@contextlib.contextmanager
def isolated_job() -> Iterator[None]:
    """Leave the process as a multirun job found it, so that the next job's DDP ranks form a group of their own.

    Lightning's launcher sets the rank, world size and master port in this process's environment and its process
    group outlives `fit`; the next job would otherwise join the finished job's group. `sys.argv`, which
    `hand_job_overrides_to_ranks` sets to the job's overrides, is the sweep's again after the job.
    """
    if not in_multirun():
        yield
        return
    environment, argv = dict(os.environ), list(sys.argv)
    try:
        yield
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(environment)
        sys.argv = argv


class SweepSummary(Callback):
    """At the end of a multirun: how many jobs finished and which failed, why; exit 1 when any failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Read every job's `run.json` under the sweep directory and report."""
        report_sweep(job_records(Path(config.hydra.sweep.dir)))


def report_sweep(jobs: dict[str, dict[str, Any]]) -> None:
    """Print how many of `jobs` finished and why each other one did not; exit 1 when any failed."""
    failed = {name: record for name, record in jobs.items() if record.get("status") != "finished"}
    lines = [f"sweep: {len(jobs) - len(failed)} of {len(jobs)} jobs finished, {len(failed)} failed"]
    lines += [f"  job {name} ({record.get('name', '')}): {describe(record)}" for name, record in failed.items()]
    print("\n".join(lines), file=sys.stderr if failed else sys.stdout, flush=True)
    if failed:
        sys.exit(1)


def job_records(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """The `run.json` of each job directory of a sweep, keyed by the job's folder name (in job order)."""
    records = {}
    for job in sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=_job_number):
        path = job / "run.json"
        records[job.name] = json.loads(path.read_text()) if path.is_file() else {"status": "not started"}
    return records


def describe(record: dict[str, Any]) -> str:
    """A failed job's status and reason."""
    reason = record.get("reason")
    return f"{record.get('status', 'unknown')}: {reason}" if reason else str(record.get("status", "unknown"))


def _job_number(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (sys.maxsize, path.name)
