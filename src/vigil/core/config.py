"""Validation of a composed config before any work starts (torchtune-style).

Two checks that Hydra's struct mode does not make: an option of another task (`loss=infonce` with
`task=segmentation`), and a key in a YAML file that the `_target_` it configures does not take.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from vigil.core.errors import ConfigError

TASK_GROUPS = ("data", "model", "loss", "masking")
_INSTANTIATE_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def check_task_options(cfg: DictConfig, choices: Mapping[str, str | None]) -> None:
    """Every task-owned group choice must be one of the options the task lists in `task.options`."""
    task = cfg.task.name
    for group in TASK_GROUPS:
        choice = choices.get(group)
        valid = list(cfg.task.options[group])
        if choice is not None and choice not in valid:
            raise ConfigError(f"{group}={choice} is not an option of task={task}; valid: {', '.join(valid)}")


def check_target_arguments(cfg: DictConfig) -> None:
    """Every key beside a `_target_` must be a parameter of that target: a typo is an error, not ignored."""
    for path, node in _target_nodes(cfg, ""):
        target = get_object(node["_target_"])
        keys = set(node.keys()) - _INSTANTIATE_KEYS
        accepted, var_keyword = _parameters(target)
        unknown = sorted(keys - accepted)
        if unknown and not var_keyword:
            where = path or "<root>"
            raise ConfigError(
                f"{where}: {node['_target_']} takes no argument {', '.join(unknown)}; "
                f"valid: {', '.join(sorted(accepted))}"
            )


def _parameters(target: object) -> tuple[set[str], bool]:
    function = target.__init__ if inspect.isclass(target) else target
    signature = inspect.signature(function)
    names = {
        p.name
        for p in signature.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    names.discard("self")
    var_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    return names, var_keyword


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
