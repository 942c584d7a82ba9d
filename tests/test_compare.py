"""`vigil-compare`: reading runs, finding the overrides that distinguish them, the table."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml

from vigil.compare import (
    aggregated_rows,
    comparison_rows,
    default_group_keys,
    distinguishing_keys,
    find_runs,
    group_runs,
    main,
    mean_curve,
    to_markdown,
)


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


def make_seed_runs(tmp_path: Path) -> None:
    scores = {("dice", "1"): 0.5, ("dice", "2"): 0.7, ("bce", "1"): 0.4, ("bce", "2"): 0.45}
    for number, ((loss, seed), score) in enumerate(scores.items()):
        make_run(tmp_path / str(number), [f"loss={loss}", f"seed={seed}"], {"val/dice": score})
    make_run(tmp_path / "4", ["loss=bce", "seed=3"], None)
    (tmp_path / "4" / "run.json").write_text(json.dumps({"status": "failed", "reason": "NonFiniteLossError: nan"}))


def test_runs_that_differ_only_in_seed_are_one_group_of_mean_and_std(tmp_path: Path):
    make_seed_runs(tmp_path)
    runs = find_runs(tmp_path)
    keys = default_group_keys(distinguishing_keys(runs))
    assert keys == ["loss"]
    rows = aggregated_rows(group_runs(runs, keys), ["val/dice"], sort_by="val/dice")
    dice_std = statistics.stdev([0.5, 0.7])
    assert rows[0] == ["dice", "2", f"0.6000 ± {dice_std:.4f}"]
    assert rows[1] == ["bce", "2", f"0.4250 ± {statistics.stdev([0.4, 0.45]):.4f}"]
    assert rows[2] == ["bce", "4: failed (NonFiniteLossError: nan)", "-"], "a failed run is a row of its own"


def test_without_replicates_there_is_no_grouping(tmp_path: Path):
    make_run(tmp_path / "0", ["loss=dice"], {"val/dice": 0.5})
    make_run(tmp_path / "1", ["loss=bce"], {"val/dice": 0.4})
    assert default_group_keys(distinguishing_keys(find_runs(tmp_path))) is None


def test_compare_writes_the_grouped_table_and_curves_with_bands(tmp_path: Path, capsys):
    make_seed_runs(tmp_path)
    for number, losses in enumerate([[1.0, 0.5], [0.8, 0.3], [1.2, 0.9], [1.0, 0.7]]):
        (tmp_path / str(number) / "csv").mkdir()
        lines = ["epoch,step,train/loss_epoch"] + [f"{epoch},{epoch},{loss}" for epoch, loss in enumerate(losses)]
        (tmp_path / str(number) / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")
    main([str(tmp_path)])
    table = (tmp_path / "comparison.md").read_text().splitlines()
    assert table[0] == "| loss | n | val/dice |"
    assert table[2].startswith("| dice | 2 | 0.6000 ± ")
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert "5 runs" in capsys.readouterr().out


def test_mean_curve_averages_the_runs_at_each_epoch():
    xs, means, stds = mean_curve([[(0, 1.0), (1, 0.5)], [(0, 0.8), (1, 0.3)]])
    assert xs == [0, 1] and means == pytest.approx([0.9, 0.4])
    assert stds == pytest.approx([statistics.stdev([1.0, 0.8]), statistics.stdev([0.5, 0.3])])
