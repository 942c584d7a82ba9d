"""End-to-end runs of `vigil-train task=contrastive` through its command line, on the generated captions."""

from __future__ import annotations

from pathlib import Path

from conftest import read_json

TINY_DATA = ["task=contrastive", "data.synthetic.num_images=60", "data.batch_size=8"]
TINY_CAPTIONS = [*TINY_DATA, "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]
RETRIEVAL = {f"{split}/r{k}_{way}" for split in ("val", "test") for k in (1, 5, 10) for way in ("i2t", "t2i")}


def chance_rsum(images: int) -> float:
    """RSUM of random rankings over `images` images with five captions each (R@K ~ K / images both ways)."""
    return 2 * sum(100 * k / images for k in (1, 5, 10))


def test_fast_dev_run_completes_with_retrieval_metrics_and_audit(cli, tmp_path: Path):
    run = tmp_path / "run"
    result = cli("train", "debug=fast", "logger=csv", f"hydra.run.dir={run}", *TINY_CAPTIONS)
    assert result.returncode == 0, result.output
    assert RETRIEVAL | {"val/rsum", "test/rsum"} <= set(read_json(run / "metrics.json"))
    audit = read_json(run / "audit.json")
    assert audit["errors"] == []
    assert audit["splits"]["train"]["captions_per_image"] == {"5": 42}
    assert audit["splits"]["train"]["positives_per_caption"] == 1.0
    assert all("samples" in facts for facts in audit["splits"].values())


def test_short_training_retrieves_far_above_chance(cli, tmp_path: Path):
    run = tmp_path / "run"
    result = cli("train", "task=contrastive", "logger=csv", "trainer.max_epochs=8", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.output
    metrics = read_json(run / "metrics.json")
    splits = read_json(run / "audit.json")["splits"]
    images = splits["test"]["samples"]
    assert metrics["test/r1_t2i"] > 5 * 100 / images, metrics
    assert metrics["test/rsum"] > 3 * chance_rsum(images), metrics
    for split in ("val", "test"):
        assert metrics[f"{split}/samples"] == splits[split]["samples"], "every image scored once"
        assert metrics[f"{split}/captions"] == splits[split]["captions"]
    assert sorted((run / "pictures").glob("val_retrieval_epoch*.png"))
    assert (run / "checkpoints" / "best.ckpt").exists()
    header = (run / "csv" / "metrics.csv").read_text().splitlines()[0]
    for name in ("img_std", "txt_std", "pos_neg_gap", "logit_scale", "unique_ids"):
        assert f"health/{name}" in header, name


def test_audit_refuses_captions_of_one_image_trained_as_negatives(cli, tmp_path: Path):
    result = cli(
        "audit", "masking=diagonal", "data.sampler=k_captions", f"hydra.run.dir={tmp_path / 'audit'}", *TINY_DATA
    )
    assert result.returncode == 1
    assert result.stderr.startswith("AuditError: 1 audit error(s): train: batches hold several captions of one image")
    assert "(use masking=same_image, or data.sampler=unique_images)" in result.stderr
    assert result.stderr.count("\n") == 1, "one line, not a traceback"
