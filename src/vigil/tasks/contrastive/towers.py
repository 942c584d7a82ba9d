"""Locking a tower (OpenCLIP's lock-image / lock-text): freeze it except its last N parameter groups.

A tower's groups, in order: what comes before its transformer blocks (embeddings), each block, and what comes
after them (final norm, pooling head, projection). `unlocked_groups=0` freezes the whole tower, 1 trains the final
norm and projection only, 2 also the last block, and so on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from vigil.core.errors import ConfigError


@dataclass(frozen=True)
class Locking:
    """How much of a locked tower still trains: its last `unlocked_groups` groups."""

    unlocked_groups: int = 0


def lock_tower(parameters: list[tuple[str, nn.Parameter]], block: re.Pattern[str], locking: Locking) -> None:
    """Freeze `parameters` (one tower's, in order) except the last `locking.unlocked_groups` groups.

    `block` matches the names of the transformer blocks' parameters, its first group being the block index.
    """
    if locking.unlocked_groups < 0:
        raise ConfigError(f"unlocked_groups={locking.unlocked_groups}: give 0 (all frozen) or more")
    groups = parameter_groups(parameters, block)
    if not any(group_name.startswith("block") for group_name, _ in groups):
        raise ConfigError(f"no transformer blocks found by {block.pattern} among the tower's parameters")
    frozen = groups[: max(len(groups) - locking.unlocked_groups, 0)]
    for _, group in frozen:
        for parameter in group:
            parameter.requires_grad_(False)


def parameter_groups(
    parameters: list[tuple[str, nn.Parameter]], block: re.Pattern[str]
) -> list[tuple[str, list[nn.Parameter]]]:
    """The tower's groups in order: `stem` (before the blocks), `block<i>` each, `head` (after them)."""
    groups: dict[str, list[nn.Parameter]] = {}
    seen_block = False
    for name, parameter in parameters:
        match = block.match(name)
        if match:
            seen_block = True
            key = f"block{int(match.group(1)):04d}"
        else:
            key = "head" if seen_block else "stem"
        groups.setdefault(key, []).append(parameter)
    order = ["stem", *sorted(k for k in groups if k.startswith("block")), "head"]
    return [(key, groups[key]) for key in order if key in groups]
