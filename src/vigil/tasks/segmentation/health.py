"""Segmentation guardrails: the audit of masks before fit, the preflight's chance loss, and the collapse monitor
during fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vigil.core.files import RecordPolicy
from vigil.core.guardrails import AuditReport
from vigil.tasks.segmentation.masking import SegmentationMasking, trains_unannotated
from vigil.tasks.segmentation.records import MaskFacts, SegmentationBatch

EMPTY_WARNING_FRACTION = 0.5
NON_BINARY_WARNING_FRACTION = 0.05


def audit_splits(
    facts: dict[str, list[MaskFacts]],
    skipped: dict[str, RecordPolicy],
    encoding: str,
    masking: SegmentationMasking,
    listing_warnings: list[str],
    root: Path,
) -> AuditReport:
    """Per split: samples, unannotated and empty-mask fractions, non-binary mask values, skipped records."""
    report = AuditReport(warnings=list(listing_warnings))
    for split, split_facts in facts.items():
        report.splits[split] = split_summary(split_facts, skipped[split])
    unannotated_trained = trains_unannotated(masking)
    for split, summary in report.splits.items():
        judge_split(report, split, summary, encoding, unannotated_trained, type(masking).__name__, root)
    return report


def split_summary(facts: list[MaskFacts], skipped: RecordPolicy) -> dict[str, Any]:
    """The numbers the audit reports for one split."""
    annotated = [f for f in facts if f.annotated]
    empty = [f for f in annotated if f.foreground_fraction == 0.0]
    samples = len(facts)
    return {
        "samples": samples,
        "annotated": len(annotated),
        "unannotated": samples - len(annotated),
        "unannotated_fraction": (samples - len(annotated)) / samples if samples else 0.0,
        "empty_masks": len(empty),
        "empty_fraction": len(empty) / len(annotated) if annotated else 0.0,
        "foreground_fraction": float(np.mean([f.foreground_fraction for f in annotated])) if annotated else 0.0,
        "non_binary_fraction": float(np.mean([f.non_binary_fraction for f in annotated])) if annotated else 0.0,
        "ignored_fraction": float(np.mean([f.ignored_fraction for f in annotated])) if annotated else 0.0,
        "skipped": len(skipped.skipped),
        "skipped_by_reason": skipped.skipped_by_reason(),
    }


def judge_split(
    report: AuditReport,
    split: str,
    summary: dict[str, Any],
    encoding: str,
    unannotated_trained: bool,
    masking_name: str,
    root: Path,
) -> None:
    """Turn one split's numbers into warnings and hard errors."""
    if summary["samples"] == 0:
        report.errors.append(f"{root}: split '{split}' has no samples (check the split file or split_fractions)")
        return
    if summary["skipped"]:
        report.warnings.append(f"{split}: {summary['skipped']} records skipped: {summary['skipped_by_reason']}")
    if split == "train" and summary["annotated"] and summary["empty_masks"] == summary["annotated"]:
        report.errors.append(
            f"{root}: every annotated training mask is empty; the model can only learn to predict nothing "
            "(check mask_encoding/mask_threshold and that the masks are the right files)"
        )
    if split == "train" and summary["annotated"] == 0:
        report.errors.append(f"{root}: no annotated training sample; nothing to learn from")
    if split != "train" and summary["annotated"] == 0:
        report.warnings.append(f"{split}: no annotated samples, its Dice/IoU are undefined")
    if split == "train" and summary["unannotated"] and unannotated_trained:
        report.warnings.append(
            f"train: {summary['unannotated']} unannotated images will be trained as empty masks "
            f"(masking={masking_name}); use masking=annotated_only unless that is the ablation"
        )
    if summary["empty_fraction"] > EMPTY_WARNING_FRACTION:
        report.warnings.append(f"{split}: {summary['empty_fraction']:.0%} of annotated masks are empty")
    if encoding == "threshold" and summary["non_binary_fraction"] > NON_BINARY_WARNING_FRACTION:
        report.warnings.append(
            f"{split}: {summary['non_binary_fraction']:.1%} of mask pixels are neither near 0 nor 255; "
            "are these index masks? (data.mask_encoding=index)"
        )


def chance_loss(
    loss: torch.nn.Module, masking: SegmentationMasking, logits: torch.Tensor, batch: SegmentationBatch
) -> float | None:
    """The loss of a constant prediction at the batch's class frequencies (binary: the foreground rate), over
    the pixels the masking counts: what a model that ignores the image scores. None when nothing counts."""
    targets = masking(logits, batch)
    if targets is None:
        return None
    classes = targets.logits.shape[1]
    if classes == 1:
        rate = (targets.mask == 1).float().mean().clamp(1e-4, 1 - 1e-4)
        constant = torch.full_like(targets.logits, float(torch.logit(rate)))
    else:
        labels = targets.mask[(targets.mask >= 0) & (targets.mask < classes)]
        frequency = torch.bincount(labels.flatten(), minlength=classes).float().clamp(min=1) / max(labels.numel(), 1)
        constant = frequency.log().view(1, classes, 1, 1).expand_as(targets.logits).contiguous()
    return float(loss(constant, targets.mask))


def health_stats(
    logits: torch.Tensor, mask: torch.Tensor, annotated: torch.Tensor, threshold: float = 0.5
) -> dict[str, float]:
    """`pred_mean` (fraction of pixels predicted foreground) vs `target_mean` (true one), on annotated samples.

    Hard predictions, not mean probabilities: a collapsed model keeps a soft background probability of a few
    percent everywhere, which can match the true foreground fraction while it predicts no pixel at all.
    """
    if not annotated.any():
        return {}
    logits, mask = logits[annotated].detach(), mask[annotated]
    if logits.shape[1] == 1:
        predicted = torch.sigmoid(logits[:, 0].float()) > threshold
    else:
        predicted = logits.argmax(dim=1) > 0
    return {"pred_mean": float(predicted.float().mean()), "target_mean": float((mask > 0).float().mean())}


def health_alerts(stats: dict[str, float], *, collapse_ratio: float, min_target_mean: float) -> dict[str, str]:
    """Prediction collapse: predicted foreground far below the true foreground while targets are not empty."""
    if "pred_mean" not in stats or stats["target_mean"] < min_target_mean:
        return {}
    if stats["pred_mean"] >= collapse_ratio * stats["target_mean"]:
        return {}
    return {
        "prediction_collapse": (
            f"predicted foreground {stats['pred_mean']:.4f} is below {collapse_ratio:g} x the true foreground "
            f"{stats['target_mean']:.4f}: the model is learning to predict empty masks (unannotated images "
            "trained as empty? try masking=annotated_only, a dice/combined loss)"
        )
    }
