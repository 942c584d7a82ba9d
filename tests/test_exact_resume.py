"""A run killed with SIGKILL mid-epoch and resumed with `resume=` ends with the metrics of the run never stopped."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from conftest import TINY, read_json
from test_cape_cli import TINY_DATA as CAPE_DATA
from test_contrastive_cli import TINY_DATA as CONTRASTIVE_DATA
from test_vqa_cli import TINY_DATA as VQA_DATA

QUIET = ["trainer.enable_progress_bar=false", "logger=csv"]
# Each task at the size of its own CLI tests; `kill_at` falls inside an epoch, after a step checkpoint.
TASKS = {
    "segmentation": [*TINY, "trainer.max_epochs=3"],
    "cape": [*CAPE_DATA, "trainer.max_epochs=3"],
    "contrastive": [*CONTRASTIVE_DATA, "trainer.max_epochs=3"],
    "vqa": [*VQA_DATA, "trainer.max_epochs=2"],
}
STEP_CHECKPOINTS = "callbacks.model_checkpoint.every_n_train_steps=2"
KILL_AT = 7


def kill_and_resume(cli, tmp_path: Path, task_args: list[str]) -> tuple[dict, dict, dict]:
    """Metrics of the run never stopped and of the killed-then-resumed one, and the checkpoint resumed from."""
    args = [*QUIET, *task_args, STEP_CHECKPOINTS]
    whole = cli("train", *args, f"hydra.run.dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.output
    kill = ["+callbacks.kill._target_=killing.KillAtStep", f"+callbacks.kill.step={KILL_AT}"]
    killed = cli("train", *args, *kill, f"hydra.run.dir={tmp_path / 'killed'}")
    assert killed.returncode == -signal.SIGKILL, killed.output
    assert not (tmp_path / "killed" / "metrics.json").exists()
    last = torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    resumed = cli("train", *args, f"resume={tmp_path / 'killed'}", f"hydra.run.dir={tmp_path / 'resumed'}")
    assert resumed.returncode == 0, resumed.output
    return read_json(tmp_path / "whole" / "metrics.json"), read_json(tmp_path / "resumed" / "metrics.json"), last


def assert_same_metrics(whole: dict, resumed: dict) -> None:
    assert whole.keys() == resumed.keys()
    different = {key: (whole[key], resumed[key]) for key in whole if abs(whole[key] - resumed[key]) > 1e-6}
    assert not different, f"resumed run differs from the run never stopped: {different}"


def test_segmentation_killed_mid_epoch_resumes_to_the_same_metrics(cli, tmp_path: Path):
    whole, resumed, last = kill_and_resume(cli, tmp_path, TASKS["segmentation"])
    # The step checkpoint before the kill, two batches into the second epoch of four batches.
    assert last["global_step"] == KILL_AT - 1
    assert last["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 2}]
    assert_same_metrics(whole, resumed)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["cape", "contrastive", "vqa"])
def test_every_task_killed_mid_epoch_resumes_to_the_same_metrics(cli, tmp_path: Path, task: str):
    whole, resumed, last = kill_and_resume(cli, tmp_path, TASKS[task])
    assert last["global_step"] == KILL_AT - 1
    assert_same_metrics(whole, resumed)
