"""Mistakes on the command line: one line on stderr, exit 1, naming the closest valid keys or options, before any
work starts."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from vigil.core.errors import ConfigError
from vigil.core.overrides import check_command_line
from vigil.train import CONF_DIR

CONF = Path(CONF_DIR)
# conf/hydra is left out: that group also holds Hydra's own configs.
GROUPS = sorted(folder.name for folder in CONF.iterdir() if folder.is_dir() and folder.name != "hydra")


def one_error_line(result) -> str:
    """The single line a refused command printed, after checking it exited 1 and printed nothing else."""
    assert result.returncode == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("override", "closest"),
    [("data.batchsize=4", "data.batch_size"), ("trainer.max_epoch=3", "trainer.max_epochs")],
)
def test_misspelled_key_is_one_line_naming_the_closest_keys(cli, tmp_path: Path, override: str, closest: str):
    line = one_error_line(cli("train", override))
    assert line.startswith(f"ConfigError: {override}: "), line
    assert f"closest: {closest}" in line and f"+{override}" in line, line
    assert not (tmp_path / "outputs").exists(), "nothing may start before the check"


@pytest.mark.parametrize(("override", "group"), [("debug=fsat", "debug"), ("experiment=kvasir", "experiment")])
def test_misspelled_option_of_an_optional_group_fails_instead_of_training_the_default(
    cli, tmp_path: Path, override: str, group: str
):
    line = one_error_line(cli("train", override))
    valid = ", ".join(sorted(path.stem for path in (CONF / group).glob("*.yaml")))
    assert line == f"ConfigError: {override} is not an option of {group}; valid: {valid}"
    assert not (tmp_path / "outputs").exists(), "the default run must not start"


@pytest.mark.parametrize("group", GROUPS)
def test_every_config_group_refuses_an_option_it_does_not_have(group: str):
    valid = ", ".join(sorted(path.stem for path in (CONF / group).glob("*.yaml")))
    with pytest.raises(ConfigError, match=r"^" + f"{group}=nosuch is not an option of {group}; valid: {valid}$"):
        check_command_line(CONF_DIR, "train", [f"{group}=nosuch"])


@pytest.mark.parametrize(("entry", "args"), [("eval", ["ckpt_path=/x/best.ckpt"]), ("audit", [])])
def test_eval_and_audit_check_their_command_line_too(monkeypatch, capsys, entry: str, args: list[str]):
    # In this process, not a subprocess that loads torch again: the entry point exits at the check.
    main = importlib.import_module(f"vigil.{entry}").main
    monkeypatch.setattr(sys, "argv", [f"vigil-{entry}", *args, "data.rooot=/data"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    line = capsys.readouterr().err.strip()
    assert line.startswith("ConfigError: data.rooot=/data: data has no key rooot; closest: data.root"), line


def test_sweeps_added_keys_and_group_choices_pass_the_check():
    check_command_line(CONF_DIR, "train", ["-m", "loss=dice,bce", "masking=annotated_only,all_pixels", "seed=1,2"])
    check_command_line(CONF_DIR, "train", ["+trainer.max_time=00:00:10:00", "task=cape", "data.synthetic.seed=3"])
    check_command_line(CONF_DIR, "train", ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu"])
    check_command_line(CONF_DIR, "eval", ["ckpt_path=/x/best.ckpt", "splits=[test]"])


def test_a_swept_value_and_a_key_of_another_group_choice_are_checked():
    with pytest.raises(ConfigError, match=r"^loss=dicee is not an option of loss; valid: "):
        check_command_line(CONF_DIR, "train", ["-m", "loss=dice,dicee"])
    # data.synthetic.num_images belongs to segmentation's data: cape's has no such key.
    with pytest.raises(ConfigError, match=r"data.synthetic has no key num_images"):
        check_command_line(CONF_DIR, "train", ["-m", "task=segmentation,cape", "data.synthetic.num_images=8"])


def test_every_problem_of_a_command_line_is_reported_together():
    with pytest.raises(ConfigError) as raised:
        check_command_line(CONF_DIR, "train", ["trainer.max_epoch=3", "data.batchsize=4"])
    lines = str(raised.value).splitlines()
    assert lines[0] == "2 problems in the composition:"
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["trainer.max_epoch=3", "data.batchsize=4"]


def test_a_key_under_a_null_node_says_it_is_null():
    with pytest.raises(ConfigError, match=r"callbacks.model_checkpoint is null, so it has no key monitor$"):
        check_command_line(CONF_DIR, "train", ["debug=overfit", "callbacks.model_checkpoint.monitor=val/iou"])


def test_what_is_not_a_spelling_mistake_is_left_to_hydra():
    # An override Hydra cannot parse, and `+` on a key that exists: Hydra's own message follows the check.
    check_command_line(CONF_DIR, "train", ["data.image_size=[32,32"])
    check_command_line(CONF_DIR, "train", ["+data.batch_size=3"])
