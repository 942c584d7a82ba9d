"""Loggers: wandb that never blocks (offline without an API key), run names and sweep groups from Hydra."""

from __future__ import annotations

import netrc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import OmegaConf
from pytorch_lightning.loggers import Logger, WandbLogger

WANDB_HOST = "api.wandb.ai"


@dataclass(frozen=True)
class RunIdentity:
    """How a run is known to the dashboards: its name, its sweep group, a stable id (for resume) and tags
    naming its task, data and model options."""

    name: str
    group: str | None
    id: str
    tags: tuple[str, ...] = ()


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
    log_model: bool | str = False,
) -> WandbLogger:
    """A WandbLogger in the run directory; resumes the run with the same `id` when one exists.

    `log_model` uploads the checkpoint callback's checkpoints as wandb artifacts: `true` at the end of training,
    `"all"` each as it is written.
    """
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
    """Name a run after its overrides and group it under its sweep, read from the Hydra runtime.

    A job of a sweep is named by the overrides that vary within the sweep (`loss=dice,seed=1`), so the runs of a
    sweep read apart on a dashboard; its full override list is in its config.
    """
    hydra = HydraConfig.get()
    overrides = [o for o in hydra.overrides.task if not o.startswith(("resume=", "ckpt_path="))]
    group = None
    if hydra.mode == RunMode.MULTIRUN:
        group = Path(hydra.sweep.dir).name
        varying = sweep_keys(Path(hydra.sweep.dir))
        overrides = [o for o in overrides if override_key(o) in varying] or overrides
    choices = hydra.runtime.choices
    tags = tuple(
        f"{group_name}={choices[group_name]}" for group_name in ("task", "data", "model") if choices.get(group_name)
    )
    return RunIdentity(name=",".join(overrides) or "defaults", group=group, id=run_id, tags=tags)


def sweep_keys(sweep_dir: Path) -> set[str]:
    """The keys a sweep varies: its command line's sweep overrides (`a=1,2`, `range(...)`) and its sweeper's
    search space, read from the sweep's `multirun.yaml` (shared by every job, whichever launcher runs it)."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return set()
    recorded = OmegaConf.load(path).hydra
    parsed = OverridesParser.create().parse_overrides(list(recorded.overrides.task))
    keys = {override.get_key_element().lstrip("+~") for override in parsed if override.is_sweep_override()}
    return keys | set((recorded.sweeper.get("params") or {}).keys())


def override_key(override: str) -> str:
    """`data.batch_size` of `+data.batch_size=8`."""
    return override.partition("=")[0].lstrip("+~")


def open_identity_fields(node: Any) -> dict[str, str | None]:
    """For a logger config, the identity fields it leaves open (`name`, `group`, `id`, `tags`: null) to be filled."""
    return {key: None for key in ("name", "group", "id", "tags") if key in node and node[key] is None}


def finish(loggers: list[Logger], failed: bool = False) -> None:
    """Close every logger, marking the run failed or finished; a wandb run is finished so that the next job of a
    sweep starts a new one (a failed one with exit code 1, which wandb shows as failed)."""
    for logger in loggers:
        logger.finalize("failed" if failed else "success")
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish(exit_code=1 if failed else 0)
