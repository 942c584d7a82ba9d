"""Resume: find the checkpoint and the run id to continue, so that training and wandb pick up where they were."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

from vigil.core.checkpoints import newest_readable, unreadable_reason
from vigil.core.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

IGNORED_OVERRIDES = ("resume=", "ckpt_path=")
RUN_FILE = "run.json"


@dataclass(frozen=True)
class ResumePoint:
    """A checkpoint to continue from and the run it belongs to."""

    ckpt_path: Path
    run_dir: Path
    run_id: str | None
    # A preempted SLURM job continuing in its own run directory (not a new directory resuming an old one).
    requeued: bool = False


def new_run_id() -> str:
    """A fresh id, used as the wandb run id so a resumed run continues the same dashboard run."""
    return uuid.uuid4().hex[:12]


def read_run_id(run_dir: Path) -> str | None:
    """The id recorded in a run directory's `run.json`, if any."""
    path = run_dir / RUN_FILE
    return json.loads(path.read_text()).get("run_id") if path.exists() else None


def find_resume_point(
    resume: bool | str, ckpt_path: str | None, overrides: list[str], output_root: Path, current_dir: Path
) -> ResumePoint | None:
    """Decide what to resume: `ckpt_path=`, `resume=<run dir>`, or `resume=true` (latest run, same overrides)."""
    if ckpt_path:
        path = Path(ckpt_path)
        if not path.is_file():
            raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file")
        reason = unreadable_reason(path)
        if reason is not None:
            raise CheckpointError(f"{path}: checkpoint is {reason} (give another ckpt_path=)")
        run_dir = path.resolve().parent.parent
        return ResumePoint(path.resolve(), run_dir, read_run_id(run_dir))
    requeued = hpc_checkpoints(current_dir)
    if requeued and not resume:
        # A preempted SLURM job requeued into its own run directory: continue from the checkpoint saved at the
        # signal, as the same run.
        chosen = newest_readable(requeued)
        return ResumePoint(chosen.resolve(), current_dir.resolve(), read_run_id(current_dir), requeued=True)
    if resume is False or resume is None:
        return None
    if resume is True:
        run_dir = latest_matching_run(overrides, output_root, current_dir)
    else:
        run_dir = Path(str(resume))
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise ConfigError(f"resume={resume}: {last} does not exist (nothing to resume; drop resume=)")
    chosen = newest_readable([last, *earlier_checkpoints(last)])
    if chosen != last:
        log.warning("resuming from %s instead of %s", chosen, last)
    return ResumePoint(chosen.resolve(), run_dir.resolve(), read_run_id(run_dir))


def hpc_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoints Lightning saved in `run_dir` on SLURM's preemption signal, newest first."""
    found = run_dir.glob("hpc_ckpt_*.ckpt")
    return sorted(found, key=lambda path: int(path.stem.removeprefix("hpc_ckpt_") or 0), reverse=True)


def earlier_checkpoints(last: Path) -> list[Path]:
    """The other checkpoints of a run, newest first: where to fall back when `last.ckpt` cannot be read."""
    others = [path for path in last.parent.glob("*.ckpt") if path.name != last.name]
    return sorted(others, key=lambda path: path.stat().st_mtime, reverse=True)


def latest_matching_run(overrides: list[str], output_root: Path, current_dir: Path) -> Path:
    """The most recent run under `output_root` with the same overrides and a `last.ckpt`."""
    wanted = _comparable(overrides)
    candidates = [
        ckpt.parent.parent
        for ckpt in output_root.glob("**/checkpoints/last.ckpt")
        if ckpt.parent.parent.resolve() != current_dir.resolve()
        and _comparable(_recorded_overrides(ckpt.parent.parent)) == wanted
    ]
    if not candidates:
        raise ConfigError(
            f"resume=true: no earlier run under {output_root} with overrides {sorted(wanted)} has "
            "checkpoints/last.ckpt (give resume=<run dir> or ckpt_path=<file>)"
        )
    return max(candidates, key=lambda run: (run / "checkpoints" / "last.ckpt").stat().st_mtime)


def _recorded_overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    return list(yaml.safe_load(path.read_text()) or []) if path.exists() else []


def _comparable(overrides: list[str]) -> set[str]:
    return {o for o in overrides if not o.startswith(IGNORED_OVERRIDES)}


def keep_earlier_csv_log(run_dir: Path) -> None:
    """Before a requeued job logs again into its run directory, keep the CSV log of its earlier part.

    Lightning's CSVLogger deletes a `metrics.csv` it finds; the earlier part is kept as `metrics-part<N>.csv`.
    """
    log_file = run_dir / "csv" / "metrics.csv"
    if not log_file.is_file():
        return
    part = 1 + len(list(log_file.parent.glob("metrics-part*.csv")))
    log_file.rename(log_file.with_name(f"metrics-part{part}.csv"))
