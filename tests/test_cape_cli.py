"""End-to-end runs of `vigil-train task=cape` through its command line, on the generated species."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import read_json
from test_cape_data import broken, mp100_content, set_annotation, write_file

QUIET = ["trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]
TINY_DATA = [
    "task=cape",
    "data.synthetic.num_categories=10",
    "data.synthetic.val_categories=2",
    "data.synthetic.test_categories=2",
    "data.synthetic.instances_per_category=8",
    "data.image_size=32",
    "data.episodes=2",
    "data.queries=3",
    "data.episodes_per_epoch=32",
    "data.batch_size=8",
    "model.dim=32",
]
PCK_METRICS = {
    f"{split}/{name}" for split in ("val", "test") for name in ("pck", "mpck", "pck_support_baseline", "samples")
}


@pytest.mark.parametrize(
    "options", [["data.shots=1", "model.head=heatmap"], ["data.shots=5", "model.head=transformer"]]
)
def test_fast_dev_run_completes_with_pck_metrics_and_audit(cli, tmp_path: Path, options: list[str]):
    run = tmp_path / "run"
    result = cli("train", "debug=fast", "logger=csv", f"hydra.run.dir={run}", *TINY_DATA, *QUIET, *options)
    assert result.returncode == 0, result.output
    metrics = read_json(run / "metrics.json")
    assert set(metrics) >= PCK_METRICS
    assert any(name.startswith("val/pck/species_") for name in metrics)
    audit = read_json(run / "audit.json")
    assert audit["errors"] == []
    assert audit["splits"]["train"]["categories"] == 6 and audit["splits"]["test"]["categories"] == 2
    assert [audit["splits"][split]["samples"] for split in ("train", "val", "test")] == [48, 16, 16]
    assert audit["splits"]["train"]["unlabelled_supervised_per_episode"] == 0
    species = next(iter(audit["splits"]["val"]["per_category"].values()))
    assert species["instances"] == 8 and {"keypoints", "v0", "v1", "v2", "visible_fraction"} <= set(species)


def test_short_training_beats_the_support_coordinates_baseline_on_unseen_categories(cli, tmp_path: Path):
    run = tmp_path / "run"
    result = cli(
        "train",
        "task=cape",
        "logger=csv",
        "trainer.max_epochs=5",
        "data.episodes_per_epoch=192",
        "data.episodes=3",
        f"hydra.run.dir={run}",
        *QUIET,
    )
    assert result.returncode == 0, result.output
    metrics = read_json(run / "metrics.json")
    assert metrics["test/pck"] > metrics["test/pck_support_baseline"] + 0.15, metrics
    assert metrics["test/mpck"] < metrics["test/pck"]
    # Every evaluation query scored once: species x episodes x queries (8 test and 4 val species, 5 queries).
    assert metrics["test/samples"] == 8 * 3 * 5 and metrics["val/samples"] == 4 * 3 * 5
    assert sorted((run / "pictures").glob("val_keypoints_epoch*.png"))
    header = (run / "csv" / "metrics.csv").read_text().splitlines()[0]
    for name in ("supervised_kpts", "supervised_fraction", "pred_std"):
        assert f"health/{name}" in header, name


def test_audit_refuses_when_no_category_can_form_an_episode(cli, tmp_path: Path):
    result = cli("audit", "data.shots=8", f"hydra.run.dir={tmp_path / 'audit'}", *TINY_DATA)
    assert result.returncode == 1
    assert result.stderr.startswith("AuditError: 2 audit error(s): train: no category has shots+1=9 instances")
    assert result.stderr.count("\n") == 1, "one line, not a traceback"


def test_bad_annotation_stops_the_run_with_one_line(cli, tmp_path: Path):
    root = tmp_path / "mp100"
    path = write_file(root, broken(set_annotation("keypoints", [8.0, 10.0, 2])))
    for split in ("val", "test"):
        write_file(root, mp100_content(), split)
    result = cli("train", "task=cape", "data=mp100", f"data.root={root}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 1
    assert result.stderr == (
        f"DataError: {path}:annotation 102: keypoints of the wrong length: 3 values, category 'cat_face' has 3 "
        "keypoints (9 values) (the keypoint and visibility arrays must match the category; fix the annotation)\n"
    )
