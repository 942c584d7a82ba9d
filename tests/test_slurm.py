"""A preempted SLURM job: Lightning's requeue on SIGUSR1, and the requeued job continuing its own run."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, read_json

from vigil.core.resume import find_resume_point
from vigil.core.slurm import run_folder

SLURM = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "vigil",
    "SLURM_NTASKS": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_NODELIST": "localhost",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
}


def test_a_slurm_job_names_its_run_folder_by_its_job_id(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    assert run_folder("2026-12-01_10-00-00") == "2026-12-01_10-00-00"
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert run_folder("unused") == "slurm-4242"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert run_folder("unused") == "slurm-77_3"


def test_a_requeued_run_continues_from_its_newest_preemption_checkpoint(tmp_path: Path):
    run = tmp_path / "runs" / "slurm-4242"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"run_id": "abc"}))
    for number in (1, 2):
        torch.save({"global_step": number}, run / f"hpc_ckpt_{number}.ckpt")
    point = find_resume_point(False, None, [], tmp_path, run)
    assert point.requeued and point.run_id == "abc"
    assert point.ckpt_path == (run / "hpc_ckpt_2.ckpt").resolve()


def wait_for(condition, process, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert process.poll() is None, process.stdout.read().decode()
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.slow
def test_sigusr1_requeues_the_job_and_the_requeued_job_continues_the_same_run(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ.get('PATH', '')}")
    for name, value in SLURM.items():
        monkeypatch.setenv(name, value)
    args = ["logger=csv", "trainer.max_epochs=6", *TINY]
    run = tmp_path / "outputs" / "runs" / "slurm-4242"

    first = cli("train", *args, background=True)
    wait_for(lambda: (run / "checkpoints" / "last.ckpt").exists(), first)
    first.send_signal(signal.SIGUSR1)
    wait_for(lambda: calls.exists() and (run / "hpc_ckpt_1.ckpt").exists(), first)
    first.kill()
    first.wait()
    assert calls.read_text().split() == ["requeue", "4242"]
    first_id = read_json(run / "run.json")["run_id"]
    saved_at = torch.load(run / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"]

    requeued = cli("train", *args)
    assert requeued.returncode == 0, requeued.output
    record = read_json(run / "run.json")
    assert record["run_id"] == first_id, "the same run (and wandb run) continues"
    assert record["resumed_from"] == str((run / "hpc_ckpt_1.ckpt").resolve())
    assert record["epochs"] == 6 and record["global_step"] > saved_at
    assert (run / "csv" / "metrics-part1.csv").is_file(), "the earlier part's log is kept"
    assert (run / "metrics.json").is_file()
