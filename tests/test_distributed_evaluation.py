"""Every task under `trainer=ddp_cpu`: two processes train, then score every val/test sample exactly once, and
their metrics equal a single-process evaluation of the same checkpoint."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import read_json

QUIET = ["trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "logger=csv", "trainer.max_epochs=1"]
TINY = {
    "segmentation": ["data.synthetic.num_images=48", "data.image_size=[32,32]", "data.batch_size=8"],
    "contrastive": ["data.synthetic.num_images=60", "data.batch_size=8"],
    "cape": [
        "data.synthetic.num_categories=10",
        "data.synthetic.val_categories=2",
        "data.synthetic.test_categories=2",
        "data.synthetic.instances_per_category=8",
        "data.image_size=32",
        "data.episodes=3",
        "data.queries=3",
        "data.episodes_per_epoch=32",
        "data.batch_size=4",
        "model.dim=32",
    ],
    "vqa": ["data.synthetic.num_images=40", "data.batch_size=8"],
}


def split_size(key: str) -> Callable[[dict, dict, str], int]:
    """The number of samples a split must score: a count from `audit.json`."""
    return lambda audit, config, split: audit["splits"][split][key]


def episode_queries(audit: dict, config: dict, split: str) -> int:
    """CAPE scores every query of every fixed evaluation episode: `episodes` per category of the split."""
    return audit["splits"][split]["categories"] * config["data"]["episodes"] * config["data"]["queries"]


# Segmentation scores the annotated images; VQA every question asked; CAPE every query of every episode (each
# tiny category has more instances than a support and its queries).
EXPECTED_SAMPLES = {
    "segmentation": split_size("annotated"),
    "contrastive": split_size("samples"),
    "cape": episode_queries,
    "vqa": split_size("questions"),
}


# Segmentation's run in `make test`; the other tasks' (about a minute each on 2 cores) in `make test-all`.
@pytest.mark.parametrize(
    "task", [task if task == "segmentation" else pytest.param(task, marks=pytest.mark.slow) for task in sorted(TINY)]
)
def test_ddp_evaluation_scores_each_sample_once_and_equals_one_process(cli, tmp_path: Path, task: str):
    run = tmp_path / "run"
    trained = cli("train", f"task={task}", "trainer=ddp_cpu", f"hydra.run.dir={run}", *QUIET, *TINY[task])
    assert trained.returncode == 0, trained.output
    assert (run / "train_ddp_process_1.log").exists(), "the second rank ran"
    distributed = read_json(run / "metrics.json")

    single = tmp_path / "single"
    checkpoint = run / "checkpoints" / "best.ckpt"
    evaluated = cli("eval", f"ckpt_path={checkpoint}", f"hydra.run.dir={single}", "trainer.enable_progress_bar=false")
    assert evaluated.returncode == 0, evaluated.output
    one_process = read_json(single / "metrics.json")

    assert distributed.keys() == one_process.keys()
    for name, value in one_process.items():
        assert math.isclose(distributed[name], value, rel_tol=1e-5, abs_tol=1e-6), (name, distributed[name], value)
    audit = read_json(run / "audit.json")
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    for split in ("val", "test"):
        expected = EXPECTED_SAMPLES[task](audit, config, split)
        assert expected > 0
        assert distributed[f"{split}/samples"] == one_process[f"{split}/samples"] == expected, split
    if task == "vqa":
        # Each test question's prediction is gathered from its rank and written once.
        rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
        assert len(rows) == len({row["id"] for row in rows}) == distributed["test/samples"]
