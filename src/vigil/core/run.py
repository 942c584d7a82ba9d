"""The run lifecycle shared by every task.

compose -> validate -> seed -> prepare data -> audit -> preflight -> fit (with monitors) -> test -> metrics.json
-> close.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import psutil
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from vigil.core.batch import check_forward_accepts
from vigil.core.checkpoints import AtomicCheckpointIO, check_checkpoint_folder, refusing_untrusted
from vigil.core.config import validate_config
from vigil.core.errors import AuditError, VigilError
from vigil.core.guardrails import AuditReport
from vigil.core.loggers import RunIdentity, finish, open_identity_fields, run_identity
from vigil.core.preflight import PreflightSettings, run_preflight
from vigil.core.randomness import RandomState
from vigil.core.resume import RUN_FILE, ResumePoint, find_resume_point, keep_earlier_csv_log, new_run_id
from vigil.core.sweep import failure_reason, hand_job_overrides_to_ranks

log = logging.getLogger(__name__)


def validate(cfg: DictConfig) -> None:
    """Check the composition before any work: task-owned options, every `_target_`'s arguments and the dicts
    they unpack, the health thresholds; all problems at once."""
    validate_config(cfg, HydraConfig.get().runtime.choices)


def build_module(cfg: DictConfig) -> pl.LightningModule:
    """The task's LightningModule, wired from the model, loss, masking and optimizer groups."""
    return instantiate(
        cfg.task.module,
        model=instantiate(cfg.model),
        loss=instantiate(cfg.loss),
        masking=instantiate(cfg.masking),
        optimizer=instantiate(cfg.task.optimizer),
        scheduler=instantiate(cfg.task.scheduler) if cfg.task.get("scheduler") else None,
        _recursive_=False,
    )


def run_audit(datamodule: pl.LightningDataModule, module: pl.LightningModule, cfg: DictConfig) -> AuditReport:
    """Prepare and set up the data, collect the task's audit and the batch contract check, write `audit.json`."""
    datamodule.prepare_data()
    datamodule.setup("fit")
    report = datamodule.audit(module.masking)
    report.count_all_samples()
    try:
        check_forward_accepts(module.model, datamodule.batch_type)
    except VigilError as error:
        report.errors.append(str(error))
    if rank_zero_only.rank == 0:
        report.to_json(Path(cfg.paths.output_dir) / "audit.json")
        log.info("\n%s", report.render())
    return report


def raise_on_audit_errors(report: AuditReport, fail_on_error: bool = True) -> None:
    """Stop before training when the audit found hard errors (or only warn, if configured)."""
    if not report.errors:
        return
    if not fail_on_error:
        report.warnings.extend(f"(audit.fail_on_error=false) {e}" for e in report.errors)
        return
    raise AuditError(f"{len(report.errors)} audit error(s): " + "; ".join(report.errors))


def preflight_settings(cfg: DictConfig) -> PreflightSettings | None:
    """The run's preflight settings, or None when `preflight=false` or `preflight.enabled=false`."""
    node = cfg.get("preflight")
    if not node:
        return None
    settings = instantiate(node)
    return settings if settings.enabled else None


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one training job and return its final metrics (also written to `metrics.json`)."""
    validate(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    log.info("seed %d", cfg.seed)
    output_dir = Path(cfg.paths.output_dir)
    overrides = list(HydraConfig.get().overrides.task)
    resume = find_resume_point(cfg.resume, cfg.ckpt_path, overrides, Path(cfg.paths.output_root), output_dir)
    identity = run_identity(resume.run_id if resume and resume.run_id else new_run_id())
    if resume and resume.requeued and rank_zero_only.rank == 0:
        keep_earlier_csv_log(output_dir)
    record = RunRecord(cfg, overrides, identity, resume)
    record.write(output_dir)
    try:
        metrics = fit_and_score(cfg, record, identity, resume, output_dir)
    except BaseException as error:
        record.status, record.reason = "failed", failure_reason(error)
        record.write(output_dir, record.trainer)
        raise
    record.status = "finished"
    record.write(output_dir, record.trainer)
    return metrics


def fit_and_score(
    cfg: DictConfig, record: RunRecord, identity: RunIdentity, resume: ResumePoint | None, output_dir: Path
) -> dict[str, float]:
    """Data, audit, preflight, fit, the final validation and test, and `metrics.json`.

    With `preflight.only` (`debug=preflight`) the run stops after the preflight and returns its numbers.
    """
    datamodule = instantiate(cfg.data)
    module = build_module(cfg)
    report = run_audit(datamodule, module, cfg)
    raise_on_audit_errors(report, cfg.audit.fail_on_error)

    trainer = build_trainer(cfg, identity, extra_callbacks=[record])
    record.trainer = trainer
    if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
        check_checkpoint_folder(Path(trainer.checkpoint_callback.dirpath), module)
    log_run_start(trainer, cfg, report)
    hand_job_overrides_to_ranks(output_dir)
    preflight = preflight_settings(cfg)
    failed = True
    try:
        # A resumed run was checked when it started: the checks would only add to its restart time.
        if preflight is not None and (resume is None or preflight.only):
            checked = run_preflight(module, datamodule, preflight, trainer)
            if preflight.only:
                failed = False
                return checked.scalars()
        trusted_only = not cfg.trust_checkpoint
        with refusing_untrusted(resume.ckpt_path) if resume else contextlib.nullcontext():
            trainer.fit(
                module,
                datamodule=datamodule,
                ckpt_path=str(resume.ckpt_path) if resume else None,
                weights_only=trusted_only,
            )
        metrics = final_metrics(trainer, module, datamodule, cfg.run_test)
        failed = False
    finally:
        finish(trainer.loggers, failed)
    if trainer.is_global_zero:
        write_json(output_dir / "metrics.json", metrics)
    return metrics


def build_trainer(cfg: DictConfig, identity: RunIdentity, extra_callbacks: list[pl.Callback]) -> pl.Trainer:
    """Instantiate callbacks, loggers (with the run's identity) and the Trainer."""
    # A callback node may be null, or a factory that returns None when switched off (vigil.core.callbacks).
    built = [instantiate(node) for node in (cfg.get("callbacks") or {}).values() if node is not None]
    callbacks = [callback for callback in built if callback is not None]
    identity_values = {"name": identity.name, "group": identity.group, "id": identity.id, "tags": list(identity.tags)}
    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if node is None:
            continue
        filled = {key: identity_values[key] for key in open_identity_fields(node)}
        loggers.append(instantiate(node, **filled))
    # RandomState: the generators' state travels with every checkpoint (exact resume).
    callbacks += [*extra_callbacks, RandomState()]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()])


def log_run_start(trainer: pl.Trainer, cfg: DictConfig, report: AuditReport) -> None:
    """Log the full resolved config and the audit's numbers to every logger."""
    config = OmegaConf.to_container(cfg, resolve=True)
    for logger in trainer.loggers:
        logger.log_hyperparams(config)
        logger.log_metrics(report.scalars(), step=0)


def final_metrics(
    trainer: pl.Trainer, module: pl.LightningModule, datamodule: pl.LightningDataModule, run_test: bool
) -> dict[str, float]:
    """Validate (and test) the best checkpoint, or the final weights when no checkpoint was kept."""
    checkpoint = trainer.checkpoint_callback
    ckpt = "best" if checkpoint is not None and checkpoint.best_model_path else None
    # The best checkpoint was written by this run: it loads with weights_only like any other.
    results = trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False, weights_only=True)
    if run_test:
        results += trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False, weights_only=True)
    metrics: dict[str, float] = {}
    for result in results:
        metrics.update({key: float(value) for key, value in result.items()})
    return dict(sorted(metrics.items()))


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write a JSON file, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


class RunRecord(pl.Callback):
    """Keeps `run.json` (identity, checkpoints, timing) and stores the composition inside every checkpoint."""

    def __init__(
        self, cfg: DictConfig, overrides: list[str], identity: RunIdentity, resume: ResumePoint | None
    ) -> None:
        self.config = OmegaConf.to_container(cfg, resolve=False)
        self.overrides = overrides
        self.identity = identity
        self.resume = resume
        self.first_step_seconds: float | None = None
        # running, then finished or failed (with the one-line reason): what a sweep summary reports.
        self.status = "running"
        self.reason: str | None = None
        self.trainer: pl.Trainer | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        """Record the time from process start to the first training step."""
        if self.first_step_seconds is None:
            self.first_step_seconds = time.time() - psutil.Process().create_time()

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        """Store the overrides and config so `vigil-eval` can rebuild the run from the checkpoint alone."""
        checkpoint["vigil"] = {"overrides": self.overrides, "config": self.config, "run_id": self.identity.id}

    def write(self, output_dir: Path, trainer: pl.Trainer | None = None) -> None:
        """Write `run.json` (rank zero only)."""
        if rank_zero_only.rank != 0:
            return
        payload: dict[str, Any] = {
            "status": self.status,
            "reason": self.reason,
            "run_id": self.identity.id,
            "name": self.identity.name,
            "group": self.identity.group,
            "overrides": self.overrides,
            "resumed_from": str(self.resume.ckpt_path) if self.resume else None,
            "first_step_seconds": self.first_step_seconds,
        }
        if trainer is not None:
            checkpoint = trainer.checkpoint_callback
            # The final validate/test(ckpt_path="best") restores the callback's state from best.ckpt, which was
            # written before last.ckpt and so holds an empty last_model_path: the file itself is the record.
            last = None
            if checkpoint is not None and checkpoint.dirpath:
                last = Path(checkpoint.dirpath, checkpoint.CHECKPOINT_NAME_LAST + checkpoint.FILE_EXTENSION)
            payload.update(
                epochs=trainer.current_epoch,
                global_step=trainer.global_step,
                best_model_path=checkpoint.best_model_path if checkpoint else None,
                last_model_path=str(last) if last is not None and last.is_file() else None,
            )
        write_json(output_dir / RUN_FILE, payload)
