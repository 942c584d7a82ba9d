"""Sweeps survive: a failed job is recorded and the next starts; DDP jobs run their own overrides; names compare."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import TINY, read_json
from wandb_records import exit_code

ONE_EPOCH = ["trainer.max_epochs=1", "logger=csv"]


def jobs(sweep: Path) -> list[Path]:
    return sorted((path for path in sweep.iterdir() if path.name.isdigit()), key=lambda path: int(path.name))


def test_a_failed_job_is_recorded_and_the_next_job_runs(cli, tmp_path: Path):
    sweep = tmp_path / "sweep"
    # Three images leave the validation split empty: the first job stops at the audit.
    tiny = [option for option in TINY if not option.startswith("data.synthetic.num_images=")]
    result = cli("train", "-m", "data.synthetic.num_images=3,48", *tiny, *ONE_EPOCH, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 1, result.output
    failed, done = (read_json(job / "run.json") for job in jobs(sweep))
    assert failed["status"] == "failed" and failed["reason"].startswith("AuditError: 1 audit error(s): ")
    assert "\n" not in failed["reason"]
    assert done["status"] == "finished" and (sweep / "1" / "metrics.json").is_file()
    assert "sweep: 1 of 2 jobs finished, 1 failed" in result.stderr
    assert "job 0 (data.synthetic.num_images=3): failed: AuditError" in result.stderr
    # A job is named by what varies in its sweep; the full override list stays in its record.
    assert done["name"] == "data.synthetic.num_images=48"
    assert "data.batch_size=8" in done["overrides"]


@pytest.mark.slow
def test_a_sweep_without_failures_exits_0_with_its_summary(cli, tmp_path: Path):
    sweep = tmp_path / "sweep"
    result = cli("train", "-m", "seed=1,2", "debug=fast", *TINY, f"hydra.sweep.dir={sweep}")
    assert result.returncode == 0, result.output
    assert "sweep: 2 of 2 jobs finished, 0 failed" in result.stdout
    assert [read_json(job / "run.json")["name"] for job in jobs(sweep)] == ["seed=1", "seed=2"]


# Three two-process runs (80 s): slow, to keep the suite within its budget.
@pytest.mark.slow
def test_ddp_jobs_of_a_multirun_run_their_own_overrides(cli, tmp_path: Path):
    sweep = tmp_path / "sweep"
    ddp = ["trainer=ddp_cpu", "debug=fast", *TINY]
    result = cli("train", "-m", "seed=1,2", *ddp, f"hydra.sweep.dir={sweep}", timeout=900)
    assert result.returncode == 0, result.output
    assert [job.name for job in jobs(sweep)] == ["0", "1"], "each rank must not start the sweep again"
    alone = cli("train", "seed=2", *ddp, f"hydra.run.dir={tmp_path / 'alone'}", timeout=900)
    assert alone.returncode == 0, alone.output
    assert read_json(sweep / "1" / "metrics.json") == read_json(tmp_path / "alone" / "metrics.json")
    assert not list(tmp_path.glob("outputs/runs/*")), "no rank wrote into a run directory of its own"


def test_a_three_trial_search_optimises_the_monitored_metric(cli, tmp_path: Path):
    sweep = tmp_path / "search"
    result = cli(
        "train",
        "hparams_search=segmentation",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.n_startup_trials=2",
        *TINY,
        *ONE_EPOCH,
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.output
    trials = jobs(sweep)
    assert len(trials) == 3
    scores = [read_json(trial / "metrics.json")["val/dice"] for trial in trials]
    found = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert found["best_value"] == pytest.approx(max(scores)), "direction comes from task.monitor_mode (max)"
    assert set(found["best_params"]) == {"task.optimizer.lr", "task.optimizer.weight_decay", "loss"}
    names = [read_json(trial / "run.json")["name"] for trial in trials]
    assert all({part.partition("=")[0] for part in name.split(",")} == set(found["best_params"]) for name in names)
    assert "sweep: 3 of 3 jobs finished, 0 failed" in result.stdout


def test_a_search_whose_every_trial_fails_ends_with_the_summary(cli, tmp_path: Path):
    sweep = tmp_path / "search"
    broken = "data.split_fractions=[0.5,0.5,0.5]"
    result = cli(
        "train", "hparams_search=segmentation", "hydra.sweeper.n_trials=2", broken, *TINY, f"hydra.sweep.dir={sweep}"
    )
    assert result.returncode == 1
    assert "Traceback" not in result.output and "No trials are completed" not in result.output
    assert "sweep: 0 of 2 jobs finished, 2 failed" in result.stderr
    assert all(read_json(trial / "run.json")["reason"].startswith("ConfigError") for trial in jobs(sweep))


def test_a_run_stopped_by_a_non_finite_loss_is_recorded_and_marked_failed_in_wandb(cli, tmp_path: Path):
    run = tmp_path / "run"
    result = cli("train", "logger=wandb", "task.optimizer.lr=1e30", *TINY, *ONE_EPOCH[:1], f"hydra.run.dir={run}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("NonFiniteLossError: train/loss is nan")
    record = read_json(run / "run.json")
    assert record["status"] == "failed" and record["reason"].startswith("NonFiniteLossError: train/loss is nan")
    (wandb_file,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    assert exit_code(wandb_file) == 1
