"""`vigil-eval ckpt_path=...`: evaluate a checkpoint on val and test and write `metrics.json`.

The training run's composition is read back from the checkpoint; overrides given here apply on top of it.
Without `ckpt_path` the model is evaluated as its config loads it (`vigil-eval task=contrastive model=clip
model.name_or_path=...`): the zero-shot baseline row, run like a training run without the fit, with its audit,
loggers (same naming and sweep group), `run.json` and `metrics.json`.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from vigil.core.checkpoints import load_checkpoint
from vigil.core.config import check_target_arguments
from vigil.core.errors import ConfigError, exit_on_vigil_error
from vigil.core.loggers import finish, run_identity
from vigil.core.overrides import checks_command_line
from vigil.core.resume import new_run_id
from vigil.core.run import (
    RunRecord,
    build_module,
    build_trainer,
    log_run_start,
    raise_on_audit_errors,
    run_audit,
    validate,
    write_json,
)
from vigil.train import CONF_DIR

EVAL_ONLY_KEYS = ("ckpt_path=", "splits=", "trust_checkpoint=")


@checks_command_line(CONF_DIR, "eval")
@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
@exit_on_vigil_error
def main(cfg: DictConfig) -> None:
    """Restore the training composition, evaluate the checkpoint, write `metrics.json`."""
    metrics = evaluate(cfg)
    for name, value in metrics.items():
        print(f"{name}: {value:.4f}")


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Evaluate `cfg.ckpt_path` on `cfg.splits` with the composition it was trained with (zero-shot without)."""
    if cfg.ckpt_path is None:
        return evaluate_zero_shot(cfg)
    ckpt_path = Path(cfg.ckpt_path)
    if not ckpt_path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file")
    train_cfg = training_config(ckpt_path, cfg.trust_checkpoint)
    check_target_arguments(train_cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(train_cfg.data)
    module = build_module(train_cfg)
    trainer = instantiate(cfg.trainer, logger=[instantiate(node) for node in cfg.logger.values()] or False)
    metrics: dict[str, float] = {}
    trusted_only = not cfg.trust_checkpoint
    for split in cfg.splits:
        run = {"val": trainer.validate, "test": trainer.test}.get(split)
        if run is None:
            raise ConfigError(f"splits: unknown split {split!r}; valid: val, test")
        # training_config has already refused an untrusted file; Lightning's own load follows the same rule.
        results = run(module, datamodule=datamodule, ckpt_path=str(ckpt_path), verbose=False, weights_only=trusted_only)
        for result in results:
            metrics.update({key: float(value) for key, value in result.items()})
    if trainer.is_global_zero:
        write_json(Path(cfg.paths.output_dir) / "metrics.json", dict(sorted(metrics.items())))
    return metrics


def evaluate_zero_shot(cfg: DictConfig) -> dict[str, float]:
    """Evaluate the model as loaded (pretrained weights, no vigil checkpoint) on `cfg.splits`, in the training
    composition of this command's overrides: validated, audited and logged as a training run would be."""
    train_cfg = compose(config_name="train", overrides=command_overrides())
    validate(train_cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    output_dir = Path(cfg.paths.output_dir)
    identity = run_identity(new_run_id())
    record = RunRecord(train_cfg, command_overrides(), identity, None)
    datamodule = instantiate(train_cfg.data)
    module = build_module(train_cfg)
    report = run_audit(datamodule, module, train_cfg)
    raise_on_audit_errors(report, train_cfg.audit.fail_on_error)
    trainer = build_trainer(train_cfg, identity, extra_callbacks=[record])
    log_run_start(trainer, train_cfg, report)
    failed = True
    try:
        metrics = evaluate_splits(trainer, module, datamodule, cfg.splits)
        failed = False
    finally:
        record.status = "failed" if failed else "finished"
        record.write(output_dir, trainer)
        finish(trainer.loggers, failed)
    if trainer.is_global_zero:
        write_json(output_dir / "metrics.json", metrics)
    return metrics


def evaluate_splits(
    trainer: pl.Trainer, module: pl.LightningModule, datamodule: pl.LightningDataModule, splits: list[str]
) -> dict[str, float]:
    """Validate and/or test the module as it is, and collect the logged metrics."""
    metrics: dict[str, float] = {}
    for split in splits:
        run = {"val": trainer.validate, "test": trainer.test}.get(split)
        if run is None:
            raise ConfigError(f"splits: unknown split {split!r}; valid: val, test")
        for result in run(module, datamodule=datamodule, verbose=False):
            metrics.update({key: float(value) for key, value in result.items()})
    return dict(sorted(metrics.items()))


def command_overrides() -> list[str]:
    """This command's overrides, without the keys only `vigil-eval` has."""
    return [o for o in HydraConfig.get().overrides.task if not o.startswith(EVAL_ONLY_KEYS)]


def training_config(ckpt_path: Path, trust: bool = False) -> DictConfig:
    """Compose the training config from the overrides stored in the checkpoint plus this command's overrides."""
    checkpoint = load_checkpoint(ckpt_path, trust)
    stored = checkpoint.get("vigil")
    if stored is None:
        raise ConfigError(f"{ckpt_path}: not a vigil checkpoint (no stored composition); evaluate it in its run")
    trained = [o for o in stored["overrides"] if not o.startswith(("resume=", "ckpt_path="))]
    return compose(config_name="train", overrides=trained + command_overrides())


if __name__ == "__main__":
    main()
