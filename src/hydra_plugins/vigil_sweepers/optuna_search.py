"""vigil's sweepers, here because Hydra instantiates sweepers only from the `hydra_plugins` namespace."""

from __future__ import annotations

from pathlib import Path

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
from omegaconf import OmegaConf

from vigil.core.sweep import job_records, report_sweep


class OptunaSearch(OptunaSweeper):
    """Hydra's Optuna sweeper, ending as every sweep does when no trial finished.

    Optuna asks for the best trial after the last one and, when every trial failed, raises "No trials are
    completed yet" past Hydra's callbacks: a traceback in place of the summary of why each trial failed. It also
    writes no `multirun.yaml`, from which each job learns the keys its sweep varies (its run name).
    """

    def sweep(self, arguments: list[str]) -> None:
        """Run the search; when no trial finished, print the sweep's summary and exit 1."""
        sweep_dir = Path(self.sweeper.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.sweeper.config, sweep_dir / "multirun.yaml")
        try:
            self.sweeper.sweep(arguments)
        except ValueError:
            jobs = job_records(sweep_dir)
            if not jobs or any(record.get("status") == "finished" for record in jobs.values()):
                raise
            report_sweep(jobs)
