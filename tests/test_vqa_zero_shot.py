"""`vigil-eval` without a checkpoint on the VQA task: the model as loaded (the tiny LLaVA here) is scored like a
trained one, with the per-type table, predictions.jsonl and metrics.json in its run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import read_json

TINY_VQA = ["task=vqa", "model=tiny_llava", "data.synthetic.num_images=40", "data.batch_size=8", "logger=csv"]


def test_zero_shot_evaluation_writes_the_per_type_table_and_predictions(cli, tmp_path: Path):
    run = tmp_path / "zero_shot"
    result = cli("eval", "splits=[test]", "trainer.enable_progress_bar=false", f"hydra.run.dir={run}", *TINY_VQA)
    assert result.returncode == 0, result.output
    metrics = read_json(run / "metrics.json")
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert rows and metrics["test/samples"] == len(rows)
    assert metrics["test/acc"] == pytest.approx(sum(row["correct"] for row in rows) / len(rows))
    assert "type            count  correct  accuracy" in result.stdout
    assert read_json(run / "audit.json")["errors"] == []
    assert not (run / "checkpoints").exists(), "nothing trained, nothing saved"
