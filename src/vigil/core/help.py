"""`vigil-train --help` (and `vigil-eval`, `vigil-audit`): the first commands, then each task's options.

Read from the conf folder when the help is asked for, so it lists what exists: a task's options are the
`task.options` of `conf/task/<task>.yaml` (what composition accepts), its defaults those of its defaults list,
and an option of any other group that picks a task (`override /task: cape`) is listed under that task.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

FIRST_COMMANDS = (
    ("vigil-train", "segmentation on the embedded data, every group at its default"),
    ("vigil-train task=cape", "another task: every group gets that task's default"),
    ("vigil-train debug=fast", "one batch of train, val and test: does everything run?"),
    ("vigil-train -m loss=dice,bce masking=annotated_only,all_pixels", "a sweep: one run per combination"),
    ("vigil-train resume=true", "continue the latest run with the same overrides from its last.ckpt"),
    ("vigil-eval ckpt_path=outputs/runs/<run>/checkpoints/best.ckpt", "evaluate a checkpoint on val and test"),
    ("vigil-eval task=contrastive model=clip", "no checkpoint: the zero-shot row of the model as it loads"),
    ("vigil-train hparams_search=segmentation", "an Optuna search over the task's learning rate, decay and loss"),
    ("vigil-compare outputs/multiruns/<sweep>", "the final metrics of a sweep's runs as a table, and curves"),
    ("vigil-export ckpt_path=<run>/checkpoints/best.ckpt out=DIR", "a fine-tuned VQA model as transformers loads it"),
)
# Not listed as groups: tasks get sections of their own, and Hydra's own groups are in --hydra-help.
SECTIONED_GROUPS = ("task", "hydra")
DEFAULT_MARK = " (default)"


def help_text(conf_dir: Path, config_name: str) -> str:
    """The help of the entry point that composes `conf_dir/<config_name>.yaml`."""
    entry, path = f"vigil-{config_name}", conf_dir / f"{config_name}.yaml"
    chosen = defaults(path)
    groups = {group: choice for group, choice in chosen.items() if group not in SECTIONED_GROUPS}
    picks = {group: option_tasks(conf_dir, group) for group in groups}
    width = max(len(command) for command, _ in FIRST_COMMANDS)
    lines = [f"{entry}: {leading_comment(path)}", "", "First commands:"]
    lines += [f"  {command:<{width}}  {what}" for command, what in FIRST_COMMANDS]
    lines += ["", "Options of each task (group=option):"]
    for task in options(conf_dir, "task"):
        heading = f"  task={task}{DEFAULT_MARK if task == chosen.get('task') else ''}"
        lines += [heading, *task_lines(conf_dir, task), *group_lines(groups, picks, task, "    ")]
    lines += ["", "Every task:", *group_lines(groups, picks, None, "  ")]
    lines += [
        "",
        f"Any key: key=value ({entry} --cfg job prints the composition); a key it does not have: +key=value.",
        f"Hydra's own flags and groups: {entry} --hydra-help",
    ]
    return "\n".join(lines) + "\n"


def task_lines(conf_dir: Path, task: str) -> list[str]:
    """The task-owned groups, each with the options the task takes and its default among them."""
    path = conf_dir / "task" / f"{task}.yaml"
    owned, chosen = OmegaConf.load(path).task.options, defaults(path)
    return [option_line(group, list(owned[group]), chosen.get(group), "    ") for group in owned]


def group_lines(
    groups: dict[str, str | None], picks: dict[str, dict[str, str | None]], task: str | None, indent: str
) -> list[str]:
    """Each group's options that pick `task` (None: that pick no task), with the entry's default among them.

    `groups` maps each group to the entry's default, `picks` each group's options to the task they pick.
    """
    lines = []
    for group, default in groups.items():
        picked = [option for option, picked in picks[group].items() if picked == task]
        if picked:
            lines.append(option_line(group, picked, default, indent))
    return lines


def option_line(group: str, listed: list[str], default: str | None, indent: str) -> str:
    """`data:            synthetic_seg (default), kvasir_seg, folder`."""
    marked = [f"{option}{DEFAULT_MARK}" if option == default else option for option in listed]
    return f"{indent}{group + ':':<16} {', '.join(marked)}"


def options(conf_dir: Path, group: str) -> list[str]:
    """The options of a config group: the names of the YAML files in its folder."""
    return sorted(path.stem for path in (conf_dir / group).glob("*.yaml"))


def option_tasks(conf_dir: Path, group: str) -> dict[str, str | None]:
    """Each option of a group with the task its defaults list picks (`override /task: cape`), or None."""
    return {option: defaults(conf_dir / group / f"{option}.yaml").get("task") for option in options(conf_dir, group)}


def defaults(path: Path) -> dict[str, str | None]:
    """The group choices of a config file's defaults list: `{"data": "synthetic_seg", "debug": None, ...}`."""
    choices: dict[str, str | None] = {}
    # A plain string entry (`_self_`, `- health`) is a config of the file's own group, not a choice.
    for item in OmegaConf.to_container(OmegaConf.load(path)).get("defaults", []):
        if isinstance(item, dict):
            for key, choice in item.items():
                choices[key.removeprefix("override ").removeprefix("optional ").lstrip("/")] = choice
    return choices


def leading_comment(path: Path) -> str:
    """The comment lines a config file starts with, as one paragraph: what its entry point does."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#") or line.startswith("# @package"):
            break
        lines.append(line.removeprefix("#").strip())
    return " ".join(lines)
