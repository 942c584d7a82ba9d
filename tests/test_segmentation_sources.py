"""Several data sets in one segmentation run (PraNet's Kvasir-SEG + CVC-ClinicDB): training on their union, each
test set scored and logged on its own, every path confined to its own root."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import read_json

from vigil.core.errors import DataError
from vigil.tasks.segmentation.data import SegmentationDataModule
from vigil.tasks.segmentation.synthetic import SyntheticSegmentation


def two_sources(base: Path) -> dict[str, Path]:
    """Two Kvasir-SEG-style folders of different sizes."""
    roots = {"kvasir": base / "kvasir", "cvc": base / "cvc"}
    SyntheticSegmentation(num_images=20, image_size=32, seed=1).write(roots["kvasir"])
    SyntheticSegmentation(num_images=30, image_size=40, seed=2).write(roots["cvc"])
    return roots


def test_training_is_the_union_and_each_test_set_stays_apart(tmp_path: Path):
    roots = two_sources(tmp_path)
    datamodule = SegmentationDataModule(None, roots={k: str(v) for k, v in roots.items()}, image_size=(16, 16))
    datamodule.setup()
    separate = {}
    for name, root in roots.items():
        single = SegmentationDataModule(str(root), image_size=(16, 16))
        single.setup()
        separate[name] = {split: [f"{name}/{r.name}" for r in records] for split, records in single.splits.items()}
    for split in ("train", "val"):
        assert [r.name for r in datamodule.splits[split]] == separate["kvasir"][split] + separate["cvc"][split]
    assert {name: [r.name for r in records] for name, records in datamodule.test_sources.items()} == {
        name: separate[name]["test"] for name in roots
    }
    loaders = datamodule.test_dataloader()
    assert [len(loader.dataset) for loader in loaders] == [
        len(separate["kvasir"]["test"]),
        len(separate["cvc"]["test"]),
    ]
    assert datamodule.context().test_sources == ["kvasir", "cvc"]


def test_split_file_paths_stay_under_their_own_root(tmp_path: Path):
    roots = two_sources(tmp_path)
    (roots["cvc"] / "split.json").write_text(json.dumps({"train": ["../kvasir/images/scene_00000.jpg"]}))
    datamodule = SegmentationDataModule(
        None, roots={k: str(v) for k, v in roots.items()}, image_size=(16, 16), split_file="split.json"
    )
    (roots["kvasir"] / "split.json").write_text(json.dumps({"train": []}))
    with pytest.raises(DataError, match="escapes the data root"):
        datamodule.setup()


def test_a_run_logs_each_test_set_under_its_name(cli, tmp_path: Path):
    roots = two_sources(tmp_path / "data")
    run = tmp_path / "run"
    result = cli(
        "train",
        "data=folder",
        "data.num_classes=1",
        "data.mask_encoding=threshold",
        f"data.roots={{kvasir:{roots['kvasir']},cvc:{roots['cvc']}}}",
        "data.image_size=[32,32]",
        "data.batch_size=8",
        "trainer.max_epochs=1",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run}",
    )
    assert result.returncode == 0, result.output
    metrics = read_json(run / "metrics.json")
    assert {"test/kvasir/dice", "test/kvasir/iou", "test/cvc/dice", "test/cvc/iou", "val/dice"} <= set(metrics)
    assert "test/dice" not in metrics
    assert metrics["test/kvasir/samples"] + metrics["test/cvc/samples"] > 0
