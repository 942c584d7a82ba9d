"""Loggers: wandb that never blocks (offline without an API key), run names and sweep groups from Hydra."""

from __future__ import annotations

import netrc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from pytorch_lightning.loggers import Logger, WandbLogger

WANDB_HOST = "api.wandb.ai"


@dataclass(frozen=True)
class RunIdentity:
    """How a run is known to the dashboards: its name, its sweep group and a stable id (for resume)."""

    name: str
    group: str | None
    id: str


def wandb_mode(requested: str = "auto") -> str:
    """`online` when an API key is configured (env or netrc), else `offline`; `WANDB_MODE` wins."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        has_key = netrc.netrc().authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        has_key = False
    return "online" if has_key else "offline"


def wandb_logger(
    project: str,
    save_dir: str,
    mode: str = "auto",
    entity: str | None = None,
    tags: list[str] | None = None,
    name: str | None = None,
    group: str | None = None,
    id: str | None = None,
    log_model: bool = False,
) -> WandbLogger:
    """A WandbLogger in the run directory; resumes the run with the same `id` when one exists."""
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=project,
        save_dir=save_dir,
        entity=entity,
        tags=list(tags or []),
        name=name,
        group=group,
        id=id,
        resume="allow",
        mode=wandb_mode(mode),
        log_model=log_model,
        settings={"silent": True},
    )


def run_identity(run_id: str) -> RunIdentity:
    """Name a run after its overrides and group it under its sweep, read from the Hydra runtime."""
    hydra = HydraConfig.get()
    overrides = [o for o in hydra.overrides.task if not o.startswith(("resume=", "ckpt_path="))]
    name = ",".join(overrides) or "defaults"
    group = Path(hydra.sweep.dir).name if hydra.mode == RunMode.MULTIRUN else None
    return RunIdentity(name=name, group=group, id=run_id)


def open_identity_fields(node: Any) -> dict[str, str | None]:
    """For a logger config, the identity fields it leaves open (`name`/`group`/`id: null`) to be filled."""
    return {key: None for key in ("name", "group", "id") if key in node and node[key] is None}


def finish(loggers: list[Logger]) -> None:
    """Close every logger; a wandb run is finished so that the next job of a sweep starts a new one."""
    for logger in loggers:
        logger.finalize("success")
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()
