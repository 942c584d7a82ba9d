"""The TaskModule template: what every task's training step does, the same way."""

from __future__ import annotations

from functools import partial

import pytest
import segmentation_models_pytorch as smp
import torch

from vigil.core.errors import NonFiniteLossError
from vigil.tasks.segmentation.losses import bce
from vigil.tasks.segmentation.masking import AnnotatedOnlyMasking
from vigil.tasks.segmentation.model import SegmentationModel
from vigil.tasks.segmentation.module import SegmentationModule
from vigil.tasks.segmentation.records import SegmentationBatch


def module() -> SegmentationModule:
    network = smp.create_model(
        "Unet", encoder_name="resnet18", encoder_weights=None, classes=1, encoder_depth=3, decoder_channels=[16, 8, 4]
    )
    return SegmentationModule(SegmentationModel(network), bce(1), AnnotatedOnlyMasking(), partial(torch.optim.SGD))


def batch(image: torch.Tensor | None = None) -> SegmentationBatch:
    return SegmentationBatch(
        image=torch.randn(2, 3, 32, 32) if image is None else image,
        mask=torch.zeros(2, 32, 32, dtype=torch.long),
        annotated=torch.tensor([True, True]),
        name=["a", "b"],
    )


def test_training_loss_and_its_terms_are_logged_synced_across_ranks(monkeypatch: pytest.MonkeyPatch):
    task = module()
    logged = {}
    monkeypatch.setattr(task, "log", lambda name, value, **options: logged.setdefault(name, options))
    output = task.training_step(batch(), 0)
    assert torch.isfinite(output["loss"]) and "logits" in output, "the health monitor's inputs are returned"
    assert logged["train/loss"]["sync_dist"] is True
    assert logged["train/loss"]["on_step"] and logged["train/loss"]["on_epoch"]
    assert all(options["sync_dist"] for options in logged.values())
    assert "train/annotated_fraction" in logged


def test_non_finite_loss_stops_before_the_update(monkeypatch: pytest.MonkeyPatch):
    task = module()
    monkeypatch.setattr(task, "log", lambda *args, **kwargs: None)
    with pytest.raises(NonFiniteLossError, match="train/loss is nan"):
        task.training_step(batch(torch.full((2, 3, 32, 32), float("nan"))), 0)
