"""`vigil-audit`: audit a task's data without training; exits 1 on a hard error."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from vigil.core.errors import exit_on_vigil_error
from vigil.core.overrides import checks_command_line
from vigil.core.run import build_module, raise_on_audit_errors, run_audit, validate
from vigil.train import CONF_DIR


@checks_command_line(CONF_DIR, "audit")
@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="audit")
@exit_on_vigil_error
def main(cfg: DictConfig) -> None:
    """Build the data and the model, audit them, print and write `audit.json`."""
    validate(cfg)
    report = run_audit(instantiate(cfg.data), build_module(cfg), cfg)
    print(report.render())
    print(f"audit written to {Path(cfg.paths.output_dir) / 'audit.json'}")
    raise_on_audit_errors(report)


if __name__ == "__main__":
    main()
