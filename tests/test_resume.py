"""Which run `resume=true` continues, and what a resume needs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from vigil.core.checkpoints import AtomicCheckpointIO
from vigil.core.errors import CheckpointError, ConfigError
from vigil.core.resume import find_resume_point


def make_run(root: Path, name: str, overrides: list[str], run_id: str, mtime: float | None = None) -> Path:
    run = root / "runs" / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run / "checkpoints").mkdir()
    last = run / "checkpoints" / "last.ckpt"
    torch.save({"global_step": 3, "state_dict": {"w": torch.zeros(2)}}, last)
    if mtime is not None:
        os.utime(last, (mtime, mtime))
    (run / "run.json").write_text(json.dumps({"run_id": run_id}))
    return run


def test_resume_true_picks_the_latest_run_with_the_same_overrides(tmp_path: Path):
    make_run(tmp_path, "a", ["loss=dice"], "old", mtime=1_000)
    newest = make_run(tmp_path, "b", ["loss=dice", "resume=true"], "new", mtime=2_000)
    make_run(tmp_path, "c", ["loss=bce"], "other", mtime=3_000)
    point = find_resume_point(True, None, ["loss=dice", "resume=true"], tmp_path, tmp_path / "runs" / "current")
    assert point.run_dir == newest.resolve()
    assert point.run_id == "new"
    assert point.ckpt_path == (newest / "checkpoints" / "last.ckpt").resolve()


def test_resume_never_picks_the_current_run(tmp_path: Path):
    current = make_run(tmp_path, "current", ["loss=dice"], "me")
    with pytest.raises(ConfigError, match="resume=true: no earlier run"):
        find_resume_point(True, None, ["loss=dice"], tmp_path, current)


def test_resume_a_named_run_directory_and_an_explicit_checkpoint(tmp_path: Path):
    run = make_run(tmp_path, "a", ["loss=dice"], "abc")
    assert find_resume_point(str(run), None, [], tmp_path, tmp_path / "x").run_id == "abc"
    explicit = find_resume_point(False, str(run / "checkpoints" / "last.ckpt"), [], tmp_path, tmp_path / "x")
    assert explicit.run_id == "abc" and explicit.run_dir == run.resolve()


def test_resume_of_a_directory_without_last_checkpoint_says_what_is_missing(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"last\.ckpt does not exist"):
        find_resume_point(str(tmp_path / "nothing"), None, [], tmp_path, tmp_path / "x")


def test_no_resume_requested_means_a_fresh_run(tmp_path: Path):
    assert find_resume_point(False, None, [], tmp_path, tmp_path / "x") is None


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_truncated_last_checkpoint_falls_back_to_the_newest_readable_one(tmp_path: Path, caplog):
    run = make_run(tmp_path, "a", ["loss=dice"], "abc", mtime=3_000)
    best = run / "checkpoints" / "best.ckpt"
    torch.save({"global_step": 2}, best)
    os.utime(best, (2_000, 2_000))
    truncate(run / "checkpoints" / "last.ckpt")
    with caplog.at_level("WARNING"):
        point = find_resume_point(True, None, ["loss=dice"], tmp_path, tmp_path / "x")
    assert point.ckpt_path == best.resolve()
    assert f"{run / 'checkpoints' / 'last.ckpt'}: checkpoint is truncated or corrupt (" in caplog.text
    assert f"resuming from {best}" in caplog.text


def test_no_readable_checkpoint_is_one_error_naming_them(tmp_path: Path):
    run = make_run(tmp_path, "a", ["loss=dice"], "abc")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"^no readable checkpoint to resume from among .*last\.ckpt"):
        find_resume_point(str(run), None, [], tmp_path, tmp_path / "x")


def test_an_explicit_corrupt_checkpoint_is_refused_in_one_line(tmp_path: Path):
    run = make_run(tmp_path, "a", ["loss=dice"], "abc")
    last = run / "checkpoints" / "last.ckpt"
    truncate(last)
    with pytest.raises(CheckpointError) as refused:
        find_resume_point(False, str(last), [], tmp_path, tmp_path / "x")
    assert str(refused.value).startswith(f"{last}: checkpoint is truncated or corrupt (")
    assert "\n" not in str(refused.value)


def test_a_write_that_fails_midway_leaves_the_previous_checkpoint(tmp_path: Path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1}, path)
    with pytest.raises(Exception, match="pickle"):
        io.save_checkpoint({"global_step": 2, "unpicklable": lambda: None}, path)
    assert torch.load(path, weights_only=True) == {"global_step": 1}
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"], "no staging file left behind"
