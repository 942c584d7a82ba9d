"""The command line checked before Hydra runs: a misspelled key, or an option a config group does not have, is
one line naming the closest valid ones.

Hydra reports a misspelled key (`trainer.max_epoch=3`) as a multi-line "Could not override" traceback and an
unknown option of a required group as a multi-line listing, and it silently skips an unknown option of an
optional group (`debug=fsat` trains the default run). Here every option given for a config group is checked
against the group's configs, and every key set with `key=value` against the composition it would change.
"""

from __future__ import annotations

import difflib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import get_args_parser
from hydra.core.config_loader import ConfigLoader
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf

from vigil.core.config import raise_problems
from vigil.core.errors import exit_on_vigil_error

# Hydra's own modes and configs read from elsewhere: Hydra handles those command lines as it always does.
UNCHECKED_FLAGS = ("help", "hydra_help", "info", "shell_completion", "experimental_rerun", "config_path", "config_dir")


def checks_command_line(conf_dir: str, config_name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a `hydra.main` entry point so that its command line is checked first (one line and exit 1)."""

    def decorate(entry: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(entry)
        def checked(*args: Any, **kwargs: Any) -> Any:
            exit_on_vigil_error(check_command_line)(conf_dir, config_name, sys.argv[1:])
            return entry(*args, **kwargs)

        return checked

    return decorate


def check_command_line(conf_dir: str, config_name: str, argv: list[str]) -> None:
    """Raise one ConfigError listing every unknown option and misspelled key of `argv`; nothing when sound."""
    args = get_args_parser().parse_args(argv)
    if any(getattr(args, flag) for flag in UNCHECKED_FLAGS):
        return
    with initialize_config_dir(conf_dir, version_base="1.3", job_name=config_name):
        try:
            problems = override_problems(args.config_name or config_name, args.overrides)
        except HydraException:
            # Not a question of spelling (an override that does not parse, a bad `+` or `~`, a sweep only a
            # plugin sweeper takes): Hydra's own report follows.
            return
    raise_problems(problems)


def override_problems(config_name: str, overrides: list[str]) -> list[str]:
    """Unknown group options first; else keys missing from the composition of every job of a sweep."""
    loader = GlobalHydra.instance().config_loader()
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(overrides)
    groups = [o for o in parsed if loader.repository.group_exists(o.key_or_group)]
    problems = [problem for override in groups for problem in option_problems(override, loader)]
    if problems:
        return problems
    keys = [o for o in parsed if o.type is OverrideType.CHANGE and o.package is None and o not in groups]
    # Only group choices, additions and deletions change which keys exist: each of their combinations is
    # composed once, and every `key=value` is looked up in each.
    configs = [
        compose(config_name, job, return_hydra_config=True) for job in jobs([o for o in parsed if o not in keys])
    ]
    found = (key_problem(override, cfg) for cfg in configs for override in keys)
    return list(dict.fromkeys(problem for problem in found if problem))


def option_problems(override: Override, loader: ConfigLoader) -> Iterator[str]:
    """Each value of a group override (one, a list, or a sweep's) that is not one of the group's configs."""
    valid = loader.get_group_options(override.key_or_group)
    for value in override_values(override):
        if value is not None and str(value) not in valid:
            group = override.key_or_group
            yield f"{group}={value} is not an option of {group}; valid: {', '.join(valid)}"


def override_values(override: Override) -> list[Any]:
    """The values an override sets: each of a sweep's, each of a list's, or the one it gives."""
    if override.is_delete():
        return []
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    value = override.value()
    return list(value) if isinstance(value, list) else [value]


def jobs(overrides: list[Override]) -> list[list[str]]:
    """The override lists of the jobs a sweep runs (one list when nothing is swept), as Hydra's sweeper makes them."""
    return BasicSweeper.split_arguments(overrides, max_batch_size=None)[0]


def key_problem(override: Override, cfg: DictConfig) -> str | None:
    """Why `key=value` cannot set its key in `cfg`: where its path leaves the config, and the closest keys there."""
    parts = override.key_or_group.split(".")
    node: Any = cfg
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth])
        if isinstance(node, ListConfig):
            # An index, not a name: Hydra decides.
            return None
        if not isinstance(node, DictConfig) or node._is_none():
            value = "null" if node._is_none() else node._value()
            return f"{override.input_line}: {where} is {value}, so it has no key {part}"
        # Iterating names every key, even one whose value is still missing (`???`), which `in` would not.
        known = [str(key) for key in node]
        if part not in known:
            return missing_key_problem(override, where, part, known)
        if OmegaConf.is_interpolation(node, part):
            # Its value is only known when the run resolves it: Hydra decides.
            return None
        node = node._get_node(part)
    return None


def missing_key_problem(override: Override, where: str, part: str, known: list[str]) -> str:
    """`<override>: <where> has no key <part>; closest: <full keys>`, or every key there when none is close."""
    matches = difflib.get_close_matches(part, known, n=3)
    lead, keys = ("closest", matches) if matches else ("valid", sorted(known))
    named = ", ".join(f"{where}.{key}" if where else key for key in keys)
    line = override.input_line
    return f"{line}: {where or 'the config'} has no key {part}; {lead}: {named} (a new key: +{line})"
