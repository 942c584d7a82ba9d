"""`vigil-compare`: reading runs, finding the overrides that distinguish them, the table."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from vigil.compare import comparison_rows, distinguishing_keys, find_runs, to_markdown


def make_run(folder: Path, overrides: list[str], metrics: dict[str, float] | None) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))


def test_find_runs_reads_overrides_as_key_values(tmp_path: Path):
    make_run(tmp_path / "0", ["loss=dice", "+trainer.max_time=1"], {"val/dice": 0.5})
    (run,) = find_runs(tmp_path)
    assert run.overrides == {"loss": "dice", "trainer.max_time": "1"}
    assert run.metrics == {"val/dice": 0.5}


def test_only_overrides_that_differ_become_columns(tmp_path: Path):
    make_run(tmp_path / "0", ["loss=dice", "seed=1", "masking=all_pixels"], {"val/dice": 0.5})
    make_run(tmp_path / "1", ["loss=bce", "seed=1"], {"val/dice": 0.7})
    assert distinguishing_keys(find_runs(tmp_path)) == ["loss", "masking"]


def test_an_unfinished_run_is_shown_not_dropped(tmp_path: Path):
    make_run(tmp_path / "0", ["loss=dice"], {"val/dice": 0.5, "test/dice": 0.4})
    make_run(tmp_path / "1", ["loss=bce"], None)
    runs = find_runs(tmp_path)
    rows = comparison_rows(runs, ["loss"], ["test/dice", "val/dice"], sort_by="val/dice")
    assert rows == [["dice", "0.4000", "0.5000"], ["bce", "not finished", "-"]]


def test_markdown_table_has_header_rule_and_rows():
    text = to_markdown(["loss", "val/dice"], [["dice", "0.5000"]])
    assert text.splitlines() == ["| loss | val/dice |", "|---|---|", "| dice | 0.5000 |"]
