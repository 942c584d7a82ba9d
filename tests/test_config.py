"""Composition: every option of every group composes and validates; mistakes fail at once, in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from vigil.core import precision
from vigil.core.config import TASK_GROUPS, check_target_arguments, validate_config
from vigil.core.errors import ConfigError
from vigil.train import CONF_DIR

CONF = Path(CONF_DIR)
TASKS = sorted(p.stem for p in (CONF / "task").glob("*.yaml"))
REAL_DATA_ROOT = ["data.root=/data/somewhere"]


def compose_train(overrides: list[str], config: str = "train") -> tuple[DictConfig, dict]:
    """Compose like the CLI does; returns the config without its hydra node, and the group choices."""
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose(config, overrides=overrides, return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


def validate(cfg: DictConfig, choices: dict) -> None:
    validate_config(cfg, choices)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def task_option_cases() -> list[tuple[str, str, str]]:
    cases = []
    for task in TASKS:
        owned = OmegaConf.load(CONF / "task" / f"{task}.yaml").task.options
        cases += [(task, group, option) for group in TASK_GROUPS for option in owned[group]]
    return cases


def overrides_for(group: str, option: str) -> list[str]:
    needs_root = {"kvasir_seg", "folder", "mp100", "kvasir_vqa"}
    extra = REAL_DATA_ROOT if option in needs_root else []
    if option == "ce":
        extra = ["data=folder", *REAL_DATA_ROOT, "data.num_classes=3"]
    return [f"{group}={option}", *extra]


@pytest.mark.parametrize(("task", "group", "option"), task_option_cases())
def test_every_task_option_composes_and_validates(task: str, group: str, option: str):
    cfg, choices = compose_train([f"task={task}", *overrides_for(group, option)])
    validate(cfg, choices)
    if group in ("loss", "masking"):
        assert instantiate(cfg[group]) is not None


def test_every_option_file_belongs_to_exactly_one_task():
    owners: dict[tuple[str, str], list[str]] = {}
    for task in TASKS:
        owned = OmegaConf.load(CONF / "task" / f"{task}.yaml").task.options
        for group in TASK_GROUPS:
            for option in owned[group]:
                owners.setdefault((group, option), []).append(task)
    for group in TASK_GROUPS:
        for option in options(group):
            assert len(owners.get((group, option), [])) == 1, (
                f"{group}/{option}.yaml owned by {owners.get((group, option))}"
            )
    assert all((CONF / group / f"{option}.yaml").exists() for group, option in owners)


@pytest.mark.parametrize(
    "overrides",
    [
        *[[f"trainer={t}"] for t in options("trainer")],
        *[[f"logger={name}"] for name in options("logger")],
        *[[f"callbacks={name}"] for name in options("callbacks")],
        *[[f"debug={name}"] for name in options("debug")],
        *[[f"experiment={name}", *REAL_DATA_ROOT] for name in options("experiment")],
        ["trainer=ddp", "trainer.num_nodes=2"],
        ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "trainer=ddp", "trainer.num_nodes=2"],
    ],
    ids=lambda overrides: " ".join(overrides),
)
def test_infrastructure_options_compose_and_validate(overrides: list[str]):
    validate(*compose_train(overrides))


def test_submitit_slurm_launcher_is_the_plugin():
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=submitit_slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


def test_eval_and_audit_configs_compose():
    validate(*compose_train(["ckpt_path=/x/best.ckpt"], config="eval"))
    cfg, _ = compose_train([], config="audit")
    check_target_arguments(cfg)


def test_bf16_mixed_precision_builds_a_cpu_trainer():
    cfg, _ = compose_train(["trainer.precision=bf16-mixed"])
    cfg.trainer.default_root_dir = "unused"
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert trainer.precision == "bf16-mixed"


@pytest.mark.parametrize(
    ("accelerator", "fast_bf16", "cuda", "expected"),
    [
        ("cpu", True, False, "bf16-mixed"),
        ("cpu", False, False, "32-true"),
        ("cpu", False, True, "32-true"),
        ("auto", False, False, "32-true"),
        ("auto", False, True, "bf16-mixed"),
        ("gpu", False, True, "bf16-mixed"),
    ],
)
def test_bf16_where_fast_keeps_float32_on_a_cpu_without_bf16_instructions(
    monkeypatch: pytest.MonkeyPatch, accelerator: str, fast_bf16: bool, cuda: bool, expected: str
):
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: fast_bf16)
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: cuda)
    assert precision.bf16_where_fast(accelerator) == expected


def test_vqa_trains_in_bf16_where_the_cpu_has_it_and_the_command_line_still_chooses():
    cfg, _ = compose_train(["task=vqa"])
    assert cfg.trainer.precision == ("bf16-mixed" if precision.cpu_has_fast_bf16() else "32-true")
    assert compose_train(["task=vqa", "trainer=gpu"])[0].trainer.precision == "bf16-mixed"
    assert compose_train(["task=vqa", "trainer.precision=32-true"])[0].trainer.precision == "32-true"


def test_option_of_another_task_fails_naming_the_valid_ones():
    cfg, choices = compose_train(["loss=bce"])
    cfg.task.options.loss = ["dice", "focal"]
    with pytest.raises(ConfigError, match=r"^loss=bce is not an option of task=segmentation; valid: dice, focal$"):
        validate_config(cfg, choices)


def test_misspelled_key_on_the_command_line_fails_at_composition():
    with pytest.raises(ConfigCompositionException, match="max_epoch"):
        compose_train(["trainer.max_epoch=3"])


def test_misspelled_key_in_a_config_file_fails_naming_the_target_and_valid_keys():
    cfg, _ = compose_train(["loss=dice"])
    with open_dict(cfg):
        cfg.loss.smoth = 1.0
    with pytest.raises(
        ConfigError, match=r"^loss: vigil\.tasks\.segmentation\.losses\.dice takes no argument smoth; valid:"
    ):
        check_target_arguments(cfg)


def test_unknown_option_lists_the_available_ones():
    with pytest.raises(ConfigCompositionException, match=r"(?s)Could not find 'loss/dicee'.*Available options"):
        compose_train(["loss=dicee"])


def test_misspelled_key_of_an_unpacked_dict_fails_before_any_work():
    cfg, choices = compose_train(["+data.synthetic.num_imgs=10"])
    with pytest.raises(ConfigError) as raised:
        validate(cfg, choices)
    assert str(raised.value).startswith("data.synthetic: SyntheticSegmentation takes no key num_imgs; valid: ")
    assert "\n" not in str(raised.value), "one problem, one line"


def test_misspelled_health_threshold_fails_naming_the_valid_ones():
    cfg, choices = compose_train(["+callbacks.health_monitor.thresholds.segmentation.colapse_ratio=0.2"])
    with pytest.raises(ConfigError) as raised:
        validate(cfg, choices)
    assert str(raised.value) == (
        "callbacks.health_monitor.thresholds.segmentation: health_alerts takes no key colapse_ratio; "
        "valid: collapse_ratio, min_target_mean"
    )


def test_missing_health_threshold_is_named():
    cfg, choices = compose_train([])
    with open_dict(cfg):
        del cfg.callbacks.health_monitor.thresholds.segmentation.min_target_mean
    with pytest.raises(ConfigError, match=r"thresholds\.segmentation: health_alerts needs min_target_mean$"):
        validate(cfg, choices)


def test_every_problem_of_a_composition_is_reported_together():
    cfg, choices = compose_train(["loss=bce", "+data.synthetic.num_imgs=10"])
    cfg.task.options.loss = ["dice"]
    with open_dict(cfg):
        cfg.loss.smoth = 1.0
    with pytest.raises(ConfigError) as raised:
        validate(cfg, choices)
    lines = str(raised.value).splitlines()
    assert lines[0] == "3 problems in the composition:"
    assert lines[1].strip().startswith("loss=bce is not an option of task=segmentation")
    assert any("takes no argument smoth" in line for line in lines[2:])
    assert any("takes no key num_imgs" in line for line in lines[2:])


def help_sections(text: str) -> dict[str, dict[str, list[str]]]:
    """The options `--help` lists under each task: `{task: {group: [option, ...]}}`, without the default mark."""
    sections: dict[str, dict[str, list[str]]] = {}
    task = None
    for line in text.splitlines():
        if line.startswith("  task="):
            task = line.removeprefix("  task=").removesuffix(" (default)")
            sections[task] = {}
        elif task is not None and line.startswith("    "):
            group, _, listed = line.strip().partition(":")
            sections[task][group] = [option.strip().removesuffix(" (default)") for option in listed.split(",")]
        else:
            task = None
    return sections


def options_by_target(group: str, task: str) -> set[str]:
    """The options of a group whose `_target_` lives in the task's package."""
    package = f"vigil.tasks.{task}."
    return {p.stem for p in (CONF / group).glob("*.yaml") if OmegaConf.load(p)._target_.startswith(package)}


def test_help_lists_each_tasks_own_options_and_the_first_commands(cli):
    result = cli("train", "--help")
    assert result.returncode == 0, result.output
    sections = help_sections(result.stdout)
    assert sorted(sections) == TASKS
    for task in TASKS:
        listed = {group: set(options) for group, options in sections[task].items() if group in TASK_GROUPS}
        assert listed == {group: options_by_target(group, task) for group in TASK_GROUPS}, task
    for command in ("vigil-train task=cape", "vigil-train debug=fast", "vigil-train -m ", "resume=true"):
        assert command in result.stdout, command
    assert "vigil-eval ckpt_path=" in result.stdout and "vigil-compare " in result.stdout
