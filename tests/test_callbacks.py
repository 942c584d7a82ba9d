"""The callbacks of a run: checkpoints recorded in run.json, early stopping, the learning-rate monitor, the progress
bar, and checkpoints as wandb artifacts."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import pytorch_lightning as pl
from conftest import TINY, read_json
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import EarlyStopping, RichProgressBar

from vigil.train import CONF_DIR

CALLBACKS = ("early_stopping", "lr_monitor", "model_summary", "progress_bar")


def compose_train(overrides: list[str]) -> DictConfig:
    """The training composition, without its hydra node."""
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


def test_a_run_records_its_last_checkpoint_and_logs_the_learning_rate(cli, tmp_path: Path):
    run = tmp_path / "run"
    result = cli("train", *TINY, "trainer.max_epochs=1", "logger=csv", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.output
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert read_json(run / "run.json")["last_model_path"] == str(last)
    with (run / "csv" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    learning_rates = [float(row["lr-AdamW"]) for row in rows if row.get("lr-AdamW")]
    assert learning_rates and all(lr == pytest.approx(0.001) for lr in learning_rates), "one value per logged step"


def test_early_stopping_stops_after_patience_plus_one_validations(cli, tmp_path: Path):
    run = tmp_path / "run"
    stop = ["callbacks.early_stopping.patience=1", "callbacks.early_stopping.min_delta=100"]
    short = ["trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "run_test=false"]
    # logger=none also shows that the learning-rate monitor (on by default) keeps quiet without a logger.
    args = [*TINY, *short, *stop, "trainer.max_epochs=6", "logger=none", f"hydra.run.dir={run}"]
    result = cli("train", *args)
    assert result.returncode == 0, result.output
    # No validation improves val/dice by 100: the first sets the best, the second exhausts a patience of 1.
    assert read_json(run / "run.json")["epochs"] == 2


def test_early_stopping_is_off_until_given_a_patience():
    assert not isinstance(instantiate(compose_train([]).callbacks.early_stopping), EarlyStopping)
    stopping = instantiate(compose_train(["task=cape", "callbacks.early_stopping.patience=3"]).callbacks.early_stopping)
    assert isinstance(stopping, EarlyStopping)
    assert (stopping.monitor, stopping.mode, stopping.patience) == ("val/pck", "max", 3)


@pytest.mark.parametrize("enabled", [True, False])
def test_the_trainer_takes_the_default_callbacks_with_or_without_a_progress_bar(enabled: bool):
    cfg = compose_train([f"trainer.enable_progress_bar={enabled}"])
    # As build_trainer does: a switched-off callback (None) is left out.
    callbacks = [callback for name in CALLBACKS if (callback := instantiate(cfg.callbacks[name])) is not None]
    trainer = pl.Trainer(callbacks=callbacks, enable_progress_bar=enabled, logger=False, enable_checkpointing=False)
    assert isinstance(trainer.progress_bar_callback, RichProgressBar) == enabled
    assert enabled or trainer.progress_bar_callback is None


def test_wandb_log_model_reaches_the_wandb_logger(tmp_path: Path):
    here = [f"logger.wandb.save_dir={tmp_path}", "logger.wandb.tags=[test]", "logger.wandb.mode=offline"]
    cfg = compose_train(["logger=wandb", "logger.wandb.log_model=all", *here])
    logger = instantiate(cfg.logger.wandb)
    assert logger._log_model == "all"
