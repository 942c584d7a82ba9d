"""SLURM: a job's run directory named by its job id, so that a preempted and requeued job continues its run.

Lightning handles the signal (SIGUSR1 saves `hpc_ckpt_<n>.ckpt` in the run directory and calls `scontrol
requeue`); vigil makes the requeued job land in the same directory, where `resume` finds that checkpoint and the
run's id (and so its wandb run).
"""

from __future__ import annotations

import os


def slurm_job_id() -> str | None:
    """The job's id as `scontrol` knows it (`<array job>_<task>` for an array task), or None outside SLURM."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        return f"{array_job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID")


def run_folder(default: str) -> str:
    """`slurm-<job id>` inside a SLURM job, `default` (a timestamp) elsewhere."""
    job = slurm_job_id()
    return f"slurm-{job}" if job else default
