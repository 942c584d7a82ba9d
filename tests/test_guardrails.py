"""Guardrails: non-finite loss stops training, health alerts, the sanity overfit verdict, the audit report."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn

from vigil.core.errors import HealthAlertError, NonFiniteLossError, SanityOverfitError
from vigil.core.guardrails import AuditReport, HealthMonitor, SanityOverfit
from vigil.tasks.segmentation.data import SegmentationDataModule
from vigil.tasks.segmentation.health import health_alerts
from vigil.tasks.segmentation.losses import dice
from vigil.tasks.segmentation.masking import AnnotatedOnlyMasking
from vigil.tasks.segmentation.model import smp_model
from vigil.tasks.segmentation.module import SegmentationModule

SYNTHETIC = {"num_images": 24, "image_size": 32, "negative_fraction": 0.1, "unannotated_fraction": 0.2, "seed": 0}


class NanAfter(torch.nn.Module):
    """A loss that turns NaN from its `after`-th call on."""

    def __init__(self, loss: torch.nn.Module, after: int) -> None:
        super().__init__()
        self.loss, self.after, self.calls = loss, after, 0

    def forward(self, logits, mask):
        self.calls += 1
        value = self.loss(logits, mask)
        return value * float("nan") if self.calls > self.after else value


def tiny_module(loss: torch.nn.Module) -> SegmentationModule:
    model = smp_model(arch="Unet", encoder="resnet18", encoder_depth=3, decoder_channels=[32, 16, 8])
    return SegmentationModule(model, loss, AnnotatedOnlyMasking(), lambda params: torch.optim.AdamW(params, lr=1e-3))


def test_nan_loss_stops_training_and_the_last_checkpoint_stays_loadable(tmp_path: Path):
    data = SegmentationDataModule(str(tmp_path / "data"), image_size=(32, 32), batch_size=4, synthetic=SYNTHETIC)
    module = tiny_module(NanAfter(dice(num_classes=1), after=5))
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, every_n_train_steps=1)
    trainer = pl.Trainer(
        max_epochs=3,
        logger=False,
        callbacks=[checkpoints],
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    with pytest.raises(NonFiniteLossError, match=r"train/loss is nan at step 5 \(epoch 1\)"):
        trainer.fit(module, datamodule=data)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 5
    assert all(torch.isfinite(value).all() for value in last["state_dict"].values() if value.is_floating_point())
    tiny_module(dice(num_classes=1)).load_state_dict(last["state_dict"])


def monitor_harness(stats: dict[str, float], alerts: dict[str, str]):
    logged: list[dict] = []
    module = SimpleNamespace(
        task_name="segmentation",
        health_stats=lambda outputs, batch: stats,
        validation_health_stats=lambda: stats,
        health_alerts=lambda s, thresholds: alerts,
        log_dict=lambda values, **kwargs: logged.append(values),
    )
    trainer = SimpleNamespace(
        global_step=0, is_global_zero=True, sanity_checking=False, state=SimpleNamespace(fn=TrainerFn.FITTING)
    )
    return module, trainer, logged


def test_health_alert_fires_only_after_patience_consecutive_checks():
    module, trainer, logged = monitor_harness({"pred_mean": 0.0}, {"prediction_collapse": "collapsed"})
    monitor = HealthMonitor(every_n_steps=1, patience=3)
    for step in range(3):
        trainer.global_step = step
        monitor.on_train_batch_end(trainer, module, {"loss": 0}, None, step)
    assert [entry["health/alert"] for entry in logged] == [0.0, 0.0, 1.0]
    assert monitor.alerts_raised == ["health alert 'prediction_collapse' at step 2: collapsed"]


def test_health_alert_stops_the_run_when_configured():
    module, trainer, _ = monitor_harness({"pred_mean": 0.0}, {"prediction_collapse": "collapsed"})
    monitor = HealthMonitor(every_n_steps=1, patience=1, stop_on_alert=True)
    with pytest.raises(HealthAlertError, match=r"prediction_collapse.*stop_on_alert=true"):
        monitor.on_train_batch_end(trainer, module, {"loss": 0}, None, 0)


def test_validation_collapse_alerts_per_validation_epoch_during_fit_only():
    module, trainer, logged = monitor_harness({"pred_mean": 0.0}, {"prediction_collapse": "collapsed"})
    monitor = HealthMonitor(patience=2)
    trainer.state.fn = TrainerFn.VALIDATING
    monitor.on_validation_epoch_end(trainer, module)
    assert logged == [], "the final evaluation after fit is not judged"
    trainer.state.fn = TrainerFn.FITTING
    for _ in range(2):
        monitor.on_validation_epoch_end(trainer, module)
    assert [entry["health/val_alert"] for entry in logged] == [0.0, 1.0]
    assert monitor.alerts_raised == ["health alert 'val_prediction_collapse' at step 0: collapsed"]


def test_collapse_is_predicted_foreground_far_below_the_true_one():
    thresholds = {"collapse_ratio": 0.1, "min_target_mean": 0.005}
    assert "prediction_collapse" in health_alerts({"pred_mean": 0.001, "target_mean": 0.07}, **thresholds)
    assert health_alerts({"pred_mean": 0.05, "target_mean": 0.07}, **thresholds) == {}
    assert health_alerts({"pred_mean": 0.0, "target_mean": 0.001}, **thresholds) == {}, "empty targets: no claim"


def test_sanity_overfit_passes_below_threshold_and_fails_above():
    trainer = SimpleNamespace(
        callback_metrics={"train/loss_epoch": torch.tensor(0.05)}, should_stop=False, current_epoch=3
    )
    passing = SanityOverfit(threshold=0.1)
    passing.on_train_epoch_end(trainer, None)
    assert trainer.should_stop
    passing.on_train_end(trainer, None)
    failing = SanityOverfit(threshold=0.01, hint="check the masks")
    failing.on_train_epoch_end(trainer, None)
    with pytest.raises(SanityOverfitError, match=r"reached 0\.05 after 4 epochs, not below 0\.01.*check the masks"):
        failing.on_train_end(trainer, None)


def test_audit_report_json_and_scalars(tmp_path: Path):
    report = AuditReport(
        splits={"train": {"samples": 10, "empty_fraction": 0.5, "skipped_by_reason": {"x": 1}}},
        warnings=["w"],
        errors=[],
    )
    report.to_json(tmp_path / "audit.json")
    assert json.loads((tmp_path / "audit.json").read_text())["splits"]["train"]["samples"] == 10
    assert report.scalars() == {
        "audit/train/samples": 10.0,
        "audit/train/empty_fraction": 0.5,
        "audit/warnings": 1.0,
        "audit/errors": 0.0,
    }


def test_audit_all_entry_counts_the_samples_of_every_split():
    report = AuditReport(splits={"all": {"skipped": 2}, "train": {"samples": 7}, "val": {"samples": 2}})
    report.count_all_samples()
    assert report.splits["all"] == {"skipped": 2, "samples": 9}
