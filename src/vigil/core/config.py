"""Validation of a composed config before any work starts (torchtune-style).

Checks that Hydra's struct mode does not make: an option of another task (`loss=infonce` with
`task=segmentation`); a key in a YAML file that the `_target_` it configures does not take; a key inside a dict
that a target unpacks into a dataclass or function (`data.synthetic`, `model.tiny`, health thresholds). Every
problem of one composition is reported together, in one ConfigError.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from vigil.core.errors import ConfigError

TASK_GROUPS = ("data", "model", "loss", "masking")
_INSTANTIATE_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
HEALTH_MONITOR = "health_monitor"

Target = TypeVar("Target")


def unpacks(**schemas: Callable[..., Any]) -> Callable[[Target], Target]:
    """Declare that a `_target_` unpacks the dict it gets for each named argument into that callable.

    `@unpacks(tiny=TinyLlava)` on a model factory makes `model.tiny.{key}` a checked key: one that `TinyLlava`
    does not take is a ConfigError at validation, not a TypeError at the first use.
    """

    def mark(target: Target) -> Target:
        target.unpacked_arguments = {**getattr(target, "unpacked_arguments", {}), **schemas}
        return target

    return mark


@dataclass(frozen=True)
class ChosenBy:
    """An unpacked dict whose schema depends on a sibling argument: `ChosenBy("name_or_path", {"tiny": TinyLlava,
    "tiny_qwen2_vl": TinyQwen2VL})` checks `tiny` against the class the checkpoint name picks."""

    argument: str
    schemas: Mapping[str, Callable[..., Any]]


def validate_config(cfg: DictConfig, choices: Mapping[str, str | None]) -> None:
    """Raise one ConfigError listing every problem of the composition; nothing when it is sound."""
    problems = [*task_option_problems(cfg, choices), *target_argument_problems(cfg), *threshold_problems(cfg)]
    raise_problems(problems)


def raise_problems(problems: list[str]) -> None:
    """One problem is one line; several are one line each under a count."""
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} problems in the composition:\n" + "\n".join(f"  {p}" for p in problems))


def check_target_arguments(cfg: DictConfig) -> None:
    """Every key beside a `_target_` (and inside a dict it unpacks) must be a parameter it takes."""
    raise_problems(list(target_argument_problems(cfg)))


def task_option_problems(cfg: DictConfig, choices: Mapping[str, str | None]) -> Iterator[str]:
    """An option chosen for a task-owned group that the task does not list."""
    task = cfg.task.name
    for group in TASK_GROUPS:
        choice = choices.get(group)
        valid = list(cfg.task.options[group])
        if choice is not None and choice not in valid:
            yield f"{group}={choice} is not an option of task={task}; valid: {', '.join(valid)}"


def target_argument_problems(cfg: DictConfig) -> Iterator[str]:
    """Keys that no `_target_` takes, and keys of unpacked dicts that their dataclass or function does not take."""
    for path, node in _target_nodes(cfg, ""):
        where = path or "<root>"
        target = get_object(node["_target_"])
        keys = set(node.keys()) - _INSTANTIATE_KEYS
        yield from _unknown_keys(where, node["_target_"], keys, target)
        for argument, schema in getattr(target, "unpacked_arguments", {}).items():
            # An interpolated dict (`data.tiny: ${model.tiny}`) is checked where it is written.
            if argument not in node or OmegaConf.is_interpolation(node, argument):
                continue
            if isinstance(schema, ChosenBy):
                schema = schema.schemas.get(str(node.get(schema.argument)))
            value = node.get(argument)
            if schema is not None and isinstance(value, DictConfig):
                yield from _unpacked_problems(f"{where}.{argument}", schema, set(value.keys()))


def threshold_problems(cfg: DictConfig) -> Iterator[str]:
    """Health thresholds of the chosen task that its module's `alert_rule` does not take, or lacks."""
    monitor = (cfg.get("callbacks") or {}).get(HEALTH_MONITOR)
    thresholds = (monitor or {}).get("thresholds") or {}
    module = cfg.task.get("module")
    if module is None or cfg.task.name not in thresholds:
        return
    rule = getattr(get_object(module["_target_"]), "alert_rule", None)
    if rule is None:
        return
    where = f"callbacks.{HEALTH_MONITOR}.thresholds.{cfg.task.name}"
    yield from _unpacked_problems(where, rule, set(thresholds[cfg.task.name].keys()), keyword_only=True)


def _unknown_keys(where: str, name: str, keys: set[str], target: object) -> Iterator[str]:
    accepted, _, var_keyword = _parameters(target)
    unknown = sorted(keys - accepted)
    if unknown and not var_keyword:
        yield f"{where}: {name} takes no argument {', '.join(unknown)}; valid: {', '.join(sorted(accepted))}"


def _unpacked_problems(
    where: str, schema: Callable[..., Any], keys: set[str], keyword_only: bool = False
) -> Iterator[str]:
    accepted, required, var_keyword = _parameters(schema, keyword_only)
    name = getattr(schema, "__qualname__", str(schema))
    unknown = sorted(keys - accepted)
    if unknown and not var_keyword:
        yield f"{where}: {name} takes no key {', '.join(unknown)}; valid: {', '.join(sorted(accepted))}"
    missing = sorted(required - keys)
    if missing:
        yield f"{where}: {name} needs {', '.join(missing)}"


def _parameters(target: object, keyword_only: bool = False) -> tuple[set[str], set[str], bool]:
    """(accepted names, required names, takes **kwargs) of a class's `__init__` or a function."""
    function = target.__init__ if inspect.isclass(target) else target
    parameters = list(inspect.signature(function).parameters.values())
    kinds = (inspect.Parameter.KEYWORD_ONLY,)
    if not keyword_only:
        kinds += (inspect.Parameter.POSITIONAL_OR_KEYWORD,)
    named = [p for p in parameters if p.kind in kinds and p.name != "self"]
    accepted = {p.name for p in named}
    required = {p.name for p in named if p.default is inspect.Parameter.empty}
    var_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    return accepted, required, var_keyword


def _target_nodes(node: object, path: str) -> Iterator[tuple[str, DictConfig]]:
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for key in node:
            if OmegaConf.is_missing(node, key):
                continue
            child = node._get_node(key)
            if OmegaConf.is_interpolation(node, key):
                continue
            yield from _target_nodes(child, f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for index, child in enumerate(node):
            yield from _target_nodes(child, f"{path}[{index}]")
