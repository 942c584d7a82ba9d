"""End-to-end runs of `vigil-train` through its command line, on tiny synthetic data."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, read_json
from PIL import Image
from wandb_records import logged


def test_fast_dev_run_completes_and_writes_the_run_directory(cli, tmp_path: Path):
    run = tmp_path / "run"
    result = cli("train", "debug=fast", "logger=csv", f"hydra.run.dir={run}", *TINY)
    assert result.returncode == 0, result.output
    for name in (".hydra/config.yaml", "audit.json", "metrics.json", "run.json"):
        assert (run / name).exists(), name
    metrics = read_json(run / "metrics.json")
    assert {"val/dice", "val/iou", "test/dice", "test/iou"} <= set(metrics)
    audit = read_json(run / "audit.json")
    assert set(audit["splits"]) == {"train", "val", "test", "all"}
    splits = audit["splits"]
    assert splits["all"]["samples"] == sum(splits[split]["samples"] for split in ("train", "val", "test")) == 48
    assert audit["errors"] == []
    assert audit["splits"]["train"]["unannotated"] > 0


def test_short_training_reaches_a_dice_threshold_with_checkpoints_log_and_pictures(cli, tmp_path: Path):
    run = tmp_path / "run"
    result = cli(
        "train",
        "logger=csv",
        f"hydra.run.dir={run}",
        "trainer.max_epochs=8",
        "data.synthetic.num_images=96",
        "data.image_size=[32,32]",
        "data.batch_size=8",
        "trainer.enable_progress_bar=false",
    )
    assert result.returncode == 0, result.output
    metrics = read_json(run / "metrics.json")
    assert metrics["test/dice_dataset"] > 0.6, metrics
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert (run / "checkpoints" / "best.ckpt").exists()
    assert (run / "csv" / "metrics.csv").read_text().count("\n") > 5
    assert sorted((run / "pictures").glob("val_predictions_epoch*.png"))
    logged_health = (run / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "health/pred_mean" in logged_health and "health/target_mean" in logged_health


@pytest.mark.slow
def test_same_seed_gives_the_same_metrics(cli, tmp_path: Path):
    args = ["logger=none", "trainer.max_epochs=1", "trainer.limit_train_batches=3", "seed=7", *TINY]
    first = cli("train", *args, f"hydra.run.dir={tmp_path / 'a'}")
    second = cli("train", *args, f"hydra.run.dir={tmp_path / 'b'}")
    assert first.returncode == 0 and second.returncode == 0, first.output + second.output
    assert read_json(tmp_path / "a" / "metrics.json") == read_json(tmp_path / "b" / "metrics.json")


def test_wandb_offline_run_holds_config_and_logged_metrics(cli, tmp_path: Path):
    run = tmp_path / "run"
    result = cli("train", "logger=wandb", "trainer.max_epochs=1", f"hydra.run.dir={run}", *TINY)
    assert result.returncode == 0, result.output
    files = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, "no API key: the run must be offline, in the run directory"
    metrics, config, record = logged(files[0])
    assert {"train/loss_step", "val/dice", "test/dice", "health/pred_mean", "audit/train/samples"} <= metrics
    assert {"task", "data", "model", "loss", "masking", "trainer"} <= config
    assert record.run_id == read_json(run / "run.json")["run_id"]
    assert list(record.tags) == ["task=segmentation", "data=synthetic_seg", "model=smp"]


@pytest.mark.slow
def test_multirun_sweep_groups_runs_and_vigil_compare_tables_them(cli, tmp_path: Path):
    sweep = tmp_path / "sweep"
    result = cli(
        "train", "-m", "loss=dice,bce", "logger=csv", "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}", *TINY
    )
    assert result.returncode == 0, result.output
    runs = [read_json(sweep / str(i) / "run.json") for i in (0, 1)]
    assert runs[0]["group"] == runs[1]["group"] == sweep.name
    assert runs[0]["name"].startswith("loss=dice") and runs[1]["name"].startswith("loss=bce")
    compared = cli("compare", str(sweep))
    assert compared.returncode == 0, compared.output
    table = (sweep / "comparison.md").read_text().splitlines()
    assert table[0].startswith("| loss | test/dice")
    assert [row.split("|")[1].strip() for row in table[2:]] == ["dice", "bce"]
    assert (sweep / "curves.png").stat().st_size > 0


@pytest.mark.slow
def test_killed_run_resumes_from_last_checkpoint_with_the_same_run_id(cli, tmp_path: Path):
    args = ["logger=csv", "trainer.max_epochs=6", *TINY]
    process = cli("train", *args, background=True)
    deadline = time.time() + 300
    while not list(tmp_path.glob("outputs/runs/*/checkpoints/last.ckpt")) and time.time() < deadline:
        assert process.poll() is None, process.stdout.read().decode()
        time.sleep(0.1)
    time.sleep(0.5)
    process.kill()
    process.wait()
    (first,) = (path.parent.parent for path in tmp_path.glob("outputs/runs/*/checkpoints/last.ckpt"))
    last = first / "checkpoints" / "last.ckpt"
    assert not (first / "metrics.json").exists(), "the first run must die mid-training"
    killed_at = torch.load(last, map_location="cpu", weights_only=False)["global_step"]

    result = cli("train", *args, "resume=true")
    assert result.returncode == 0, result.output
    (second,) = (path for path in tmp_path.glob("outputs/runs/*") if path != first)
    record = read_json(second / "run.json")
    assert record["resumed_from"] == str(last.resolve())
    assert record["run_id"] == read_json(first / "run.json")["run_id"]
    assert record["epochs"] == 6
    with (second / "csv" / "metrics.csv").open() as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle)]
    assert min(s for s in steps if s > 0) > killed_at - 1, "the resumed run continues, it does not start over"


def test_resume_without_an_earlier_run_says_so(cli, tmp_path: Path):
    result = cli("train", "resume=true", "logger=none", *TINY, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 1
    assert "ConfigError: resume=true: no earlier run" in result.stderr


def test_eval_of_a_checkpoint_reproduces_the_training_test_metrics_logged_to_many(cli, tmp_path: Path):
    run = tmp_path / "run"
    trained = cli("train", "logger=many", "trainer.max_epochs=1", f"hydra.run.dir={run}", *TINY)
    assert trained.returncode == 0, trained.output
    assert list((run / "tensorboard").glob("events.out.tfevents.*")) and list((run / "wandb").glob("offline-run-*"))
    best = read_json(run / "run.json")["best_model_path"]
    evaluation = tmp_path / "eval"
    result = cli("eval", f"ckpt_path={best}", f"hydra.run.dir={evaluation}")
    assert result.returncode == 0, result.output
    expected, got = read_json(run / "metrics.json"), read_json(evaluation / "metrics.json")
    for name in ("val/dice", "test/dice", "test/iou"):
        assert abs(expected[name] - got[name]) < 1e-5, name


def test_sanity_overfit_passes_on_learnable_data(cli, tmp_path: Path):
    result = cli("train", "debug=overfit", "logger=none", f"hydra.run.dir={tmp_path / 'run'}", *TINY)
    assert result.returncode == 0, result.output
    assert "sanity overfit passed" in result.output


def test_sanity_overfit_fails_loudly_when_the_loss_does_not_fall(cli, tmp_path: Path):
    result = cli(
        "train",
        "debug=overfit",
        "logger=none",
        "trainer.max_epochs=2",
        "task.overfit_threshold=0.0001",
        f"hydra.run.dir={tmp_path / 'run'}",
        *TINY,
    )
    assert result.returncode == 1
    assert "SanityOverfitError: debug=overfit: train/loss_epoch reached" in result.stderr


@pytest.mark.slow
def test_profile_run_writes_the_profiler_report(cli, tmp_path: Path):
    run = tmp_path / "run"
    result = cli("train", "debug=profile", "logger=none", f"hydra.run.dir={run}", *TINY)
    assert result.returncode == 0, result.output
    assert list(run.glob("*profile*.txt"))


def test_audit_cli_prints_the_report_and_exits_zero_on_good_data(cli, tmp_path: Path):
    run = tmp_path / "audit"
    result = cli("audit", f"hydra.run.dir={run}", *TINY[:3])
    assert result.returncode == 0, result.output
    assert "train: samples=" in result.stdout
    assert read_json(run / "audit.json")["errors"] == []


def test_audit_cli_exits_nonzero_when_every_mask_is_empty(cli, tmp_path: Path):

    root = tmp_path / "empty_masks"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index in range(10):
        Image.new("RGB", (32, 32), (200, 90, 80)).save(root / "images" / f"{index}.png")
        Image.new("L", (32, 32), 0).save(root / "masks" / f"{index}.png")
    result = cli("audit", "data=folder", f"data.root={root}", f"hydra.run.dir={tmp_path / 'audit'}")
    assert result.returncode == 1
    assert "every annotated training mask is empty" in result.stderr
    assert result.stderr.count("\n") == 1, "one line, not a traceback"


def test_bad_data_is_one_line_naming_the_file(cli, tmp_path: Path):
    root = tmp_path / "bad"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "images" / "broken.jpg").write_bytes(b"not an image")
    result = cli("train", "data=folder", f"data.root={root}", "logger=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"DataError: {root / 'images' / 'broken.jpg'}: cannot be decoded as an image: "
        f"cannot identify image file '{root / 'images' / 'broken.jpg'}' (replace or remove the file)"
    )


def test_an_image_damaged_past_its_header_is_one_line_from_a_loader_worker(cli, tmp_path: Path):
    # The header is read at setup, the pixels only when a worker loads the sample: torch re-raises the worker's
    # error in the training process, which must still print the one line.
    root = tmp_path / "damaged"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    for index in range(8):
        Image.fromarray(noise[index]).save(root / "images" / f"{index}.jpg", quality=95)
        Image.new("L", (32, 32), index % 2).save(root / "masks" / f"{index}.png")
    damaged = root / "images" / "3.jpg"
    # Header and tables kept, the end of the scan cut off.
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size * 2 // 3])
    result = cli("train", "data=folder", f"data.root={root}", "data.num_workers=1", "data.image_size=[32,32]",
                 "debug=fast", "logger=none", f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith(f"DataError: {damaged}: cannot be decoded as an image: "), result.stderr
    assert result.stderr.count("\n") == 1, "one line, not the worker's traceback"


def test_masking_ablation_warns_that_unannotated_images_become_empty_masks(cli, tmp_path: Path):
    run = tmp_path / "run"
    result = cli("train", "masking=all_pixels", "debug=fast", "logger=none", f"hydra.run.dir={run}", *TINY)
    assert result.returncode == 0, result.output
    warnings = read_json(run / "audit.json")["warnings"]
    assert any("will be trained as empty masks" in w for w in warnings)
