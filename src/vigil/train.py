"""`vigil-train`: train one composed experiment (`vigil-train task=segmentation loss=dice ...`)."""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from vigil.core.errors import exit_on_vigil_error
from vigil.core.help import help_text
from vigil.core.overrides import checks_command_line
from vigil.core.precision import bf16_where_fast
from vigil.core.slurm import run_folder

log = logging.getLogger(__name__)
# Lightning still tests `isinstance(spec, LeafSpec)`, which torch deprecates: a warning in every run and loader
# worker that says nothing about the run.
warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
# `hydra.run.dir` names a SLURM job's run by its job id, so a requeued job finds its run directory again.
OmegaConf.register_new_resolver("vigil_run_folder", run_folder, replace=True)
# `--help` of every entry point (conf/hydra/default.yaml): its commands and each task's options, read from conf/.
OmegaConf.register_new_resolver("vigil_help", functools.partial(help_text, Path(CONF_DIR)), replace=True)
# A task that trains in bf16 where it is fast (the VQA default): float32 on a CPU without bfloat16 instructions.
OmegaConf.register_new_resolver("vigil_bf16_where_fast", bf16_where_fast, replace=True)
# An `hparams_search` preset optimises the task's monitored metric in the direction its monitor_mode says.
OmegaConf.register_new_resolver(
    "vigil_optuna_direction", lambda mode: {"max": "maximize", "min": "minimize"}[mode], replace=True
)


@checks_command_line(CONF_DIR, "train")
@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@exit_on_vigil_error
def main(cfg: DictConfig) -> float | None:
    """Train and return the monitored metric, so a Hydra sweeper can optimise it.

    A job of a multirun that fails is recorded as failed (its `run.json` says why) and returns None, which the
    Optuna sweeper records as a failed trial; the sweep goes on and its summary exits 1 at the end.
    """
    # Imported here so that a bad override is reported before torch and Lightning load.
    from vigil.core.run import train
    from vigil.core.sweep import failure_reason, in_multirun, isolated_job

    try:
        with isolated_job():
            metrics = train(cfg)
    except Exception as error:
        if not in_multirun():
            raise
        log.error("job failed, the sweep goes on: %s", failure_reason(error))
        return None
    return metrics.get(cfg.task.monitor)


if __name__ == "__main__":
    main()
