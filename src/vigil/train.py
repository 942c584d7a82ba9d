"""`vigil-train`: train one composed experiment (`vigil-train task=segmentation loss=dice ...`)."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from vigil.core.errors import exit_on_vigil_error
from vigil.core.slurm import run_folder

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
# `hydra.run.dir` names a SLURM job's run by its job id, so a requeued job finds its run directory again.
OmegaConf.register_new_resolver("vigil_run_folder", run_folder, replace=True)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@exit_on_vigil_error
def main(cfg: DictConfig) -> float | None:
    """Train and return the monitored metric, so a Hydra sweeper can optimise it."""
    # Imported here so that a bad override is reported before torch and Lightning load.
    from vigil.core.run import train

    metrics = train(cfg)
    return metrics.get(cfg.task.monitor)


if __name__ == "__main__":
    main()
