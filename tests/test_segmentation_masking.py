import pytest
import torch

from vigil.tasks.segmentation.losses import CombinedLoss, bce, ce, dice, focal, lovasz, tversky
from vigil.tasks.segmentation.masking import (
    AllPixelsMasking,
    AnnotatedOnlyMasking,
    IgnoreIndexMasking,
    trains_unannotated,
)
from vigil.tasks.segmentation.records import SegmentationBatch

IGNORE = 255
UNANNOTATED = 1  # index of the unannotated sample in every batch below

# ce gets smooth_factor=0.0 explicitly: its default (None) crashes, see test_segmentation_losses.py.
LOSSES = {
    "bce": (1, lambda: bce(1, ignore_index=IGNORE)),
    "ce": (3, lambda: ce(3, ignore_index=IGNORE, smooth_factor=0.0)),
    "dice": (1, lambda: dice(1, ignore_index=IGNORE)),
    "dice_multiclass": (3, lambda: dice(3, ignore_index=IGNORE)),
    "focal": (1, lambda: focal(1, ignore_index=IGNORE)),
    "tversky": (1, lambda: tversky(1, ignore_index=IGNORE, alpha=0.3, beta=0.7)),
    "lovasz": (1, lambda: lovasz(1, ignore_index=IGNORE)),
    "lovasz_multiclass": (3, lambda: lovasz(3, ignore_index=IGNORE)),
    "combined": (
        1,
        lambda: CombinedLoss(
            {"dice": dice(1, ignore_index=IGNORE), "bce": bce(1, ignore_index=IGNORE)}, {"dice": 0.5, "bce": 0.5}
        ),
    ),
}


def make_batch(num_classes, annotated=(True, False, True), seed=0):
    generator = torch.Generator().manual_seed(seed)
    n = len(annotated)
    mask = torch.randint(0, max(num_classes, 2), (n, 6, 6), generator=generator)
    mask[0, 0, :3] = IGNORE
    for index, flag in enumerate(annotated):
        if not flag:
            mask[index] = 0  # what the dataset hands out for an unannotated image
    return SegmentationBatch(
        image=torch.randn(n, 3, 6, 6, generator=generator),
        mask=mask,
        annotated=torch.tensor(annotated),
        name=[f"img{i}" for i in range(n)],
    )


def make_logits(num_classes, n=3, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, num_classes, 6, 6, generator=generator) * 2


def with_other_unannotated_logits(logits):
    changed = logits.clone()
    changed[UNANNOTATED] = torch.randn_like(logits[UNANNOTATED]) * 5 + 3
    return changed


def loss_and_grad(masking, loss_fn, logits, batch):
    leaf = logits.clone().requires_grad_(True)
    targets = masking(leaf, batch)
    loss = loss_fn(targets.logits, targets.mask)
    loss.backward()
    return loss.detach(), leaf.grad


@pytest.mark.parametrize("name", list(LOSSES))
def test_unannotated_sample_does_not_change_loss(name):
    num_classes, factory = LOSSES[name]
    loss_fn, batch, logits = factory(), make_batch(num_classes), make_logits(num_classes)

    loss, grad = loss_and_grad(AnnotatedOnlyMasking(), loss_fn, logits, batch)
    changed_loss, changed_grad = loss_and_grad(
        AnnotatedOnlyMasking(), loss_fn, with_other_unannotated_logits(logits), batch
    )

    assert torch.equal(grad[UNANNOTATED], torch.zeros_like(grad[UNANNOTATED]))
    assert torch.equal(changed_grad[UNANNOTATED], torch.zeros_like(grad[UNANNOTATED]))
    assert torch.equal(loss, changed_loss)
    assert torch.equal(grad, changed_grad)


@pytest.mark.parametrize("name", list(LOSSES))
def test_unannotated_sample_changes_loss_under_all_pixels(name):
    num_classes, factory = LOSSES[name]
    loss_fn, batch, logits = factory(), make_batch(num_classes), make_logits(num_classes)

    loss, grad = loss_and_grad(AllPixelsMasking(IGNORE), loss_fn, logits, batch)
    changed_loss, _ = loss_and_grad(AllPixelsMasking(IGNORE), loss_fn, with_other_unannotated_logits(logits), batch)

    assert grad[UNANNOTATED].abs().max() > 0
    assert not torch.equal(loss, changed_loss)


def test_annotated_only_keeps_annotated_samples_and_ignore_values():
    batch = make_batch(1)
    logits = make_logits(1)
    targets = AnnotatedOnlyMasking()(logits, batch)
    assert torch.equal(targets.logits, logits[[0, 2]])
    assert torch.equal(targets.mask, batch.mask[[0, 2]])
    assert (targets.mask == IGNORE).any()


def test_annotated_only_returns_none_without_annotated_sample():
    batch = make_batch(1, annotated=(False, False, False))
    assert AnnotatedOnlyMasking()(make_logits(1), batch) is None


def test_ignore_index_keeps_every_sample_and_ignore_values():
    batch = make_batch(1)
    logits = make_logits(1)
    targets = IgnoreIndexMasking()(logits, batch)
    assert targets.logits is logits
    assert torch.equal(targets.mask, batch.mask)
    assert (targets.mask == IGNORE).any()


def test_all_pixels_maps_ignored_pixels_to_background():
    batch = make_batch(3)
    targets = AllPixelsMasking(IGNORE)(make_logits(3), batch)
    ignored = batch.mask == IGNORE
    assert ignored.any()
    assert (targets.mask[ignored] == 0).all()
    assert torch.equal(targets.mask[~ignored], batch.mask[~ignored])
    assert targets.logits.shape[0] == len(batch)


def test_all_pixels_without_ignore_index_leaves_mask_unchanged():
    batch = make_batch(1)
    assert torch.equal(AllPixelsMasking()(make_logits(1), batch).mask, batch.mask)


def test_only_annotated_only_declines_to_train_unannotated_samples():
    assert trains_unannotated(AnnotatedOnlyMasking()) is False
    assert trains_unannotated(IgnoreIndexMasking()) is True
    assert trains_unannotated(AllPixelsMasking()) is True
