"""Contrastive guardrails: the audit of captions and batches before fit, and the collapse monitor during fit."""

from __future__ import annotations

import math
from collections import Counter
from itertools import islice
from typing import Any

import torch

from vigil.core.guardrails import AuditReport
from vigil.tasks.contrastive.masking import ContrastiveMasking
from vigil.tasks.contrastive.records import Catalog, ImageRecord
from vigil.tasks.contrastive.sampler import CaptionBatchSampler

AUDITED_BATCHES = 50


def audit_splits(catalog: Catalog, masking: ContrastiveMasking, sampler: CaptionBatchSampler) -> AuditReport:
    """Per split: images, captions and captions per image; for training, what the batches hold under the sampler.

    The batch facts come from running the training sampler over the real image ids: how many distinct images a
    batch holds, how many positives each caption has under the masking, and how many pairs of one image the
    masking makes negatives of each other (the collapse of ids taken from positions: must be zero).
    """
    report = AuditReport()
    report.splits["all"] = file_summary(catalog)
    for split, records in catalog.splits.items():
        report.splits[split] = split_summary(records)
    for split, count in sorted(catalog.extra_splits.items()):
        report.splits[split] = {"samples": count, "used": False}
    judge_file(report, catalog)
    judge_splits(report, catalog, sampler.mode)
    if catalog.splits["train"]:
        report.splits["train"].update(batch_summary(catalog.splits["train"], masking, sampler))
        judge_batches(report, masking, sampler)
    return report


def file_summary(catalog: Catalog) -> dict[str, Any]:
    """What reading the annotation file found, beyond the splits."""
    reasons = catalog.policy.skipped_by_reason()
    return {
        "file": str(catalog.file),
        "samples": sum(len(records) for records in catalog.splits.values()) + sum(catalog.extra_splits.values()),
        "skipped": len(catalog.policy.skipped),
        "skipped_by_reason": reasons,
        "missing_image_files": reasons.get("missing image file", 0),
        "images_without_captions": reasons.get("no captions", 0),
        "merged_duplicates": catalog.merged_duplicates,
        "empty_captions": catalog.empty_captions,
        "unlisted_image_files": catalog.unlisted_files,
    }


def split_summary(records: list[ImageRecord]) -> dict[str, Any]:
    """Images, captions and the histogram of captions per image of one split."""
    counts = [len(record.captions) for record in records]
    return {
        "samples": len(records),
        "captions": sum(counts),
        "captions_per_image": {str(n): c for n, c in sorted(Counter(counts).items())},
        "min_captions": min(counts, default=0),
        "max_captions": max(counts, default=0),
    }


def batch_summary(
    records: list[ImageRecord], masking: ContrastiveMasking, sampler: CaptionBatchSampler
) -> dict[str, float]:
    """Means over the first training batches: pairs, distinct images, positives per caption, same-image negatives."""
    pairs, unique, positives, same_negatives = [], [], [], []
    for keys in islice(iter(sampler), AUDITED_BATCHES):
        ids = torch.tensor([records[index].img_id for index, _ in keys])
        is_positive = masking(ids, ids)
        same_image = ids[:, None] == ids[None, :]
        pairs.append(len(keys))
        unique.append(ids.unique().numel())
        positives.append(is_positive.sum(0).float().mean().item())
        same_negatives.append((same_image & ~is_positive).sum().item())
    return {
        "batch_pairs": sum(pairs) / len(pairs),
        "batch_unique_images": sum(unique) / len(unique),
        "positives_per_caption": sum(positives) / len(positives),
        "same_image_negatives_per_batch": sum(same_negatives) / len(same_negatives),
    }


def judge_file(report: AuditReport, catalog: Catalog) -> None:
    """Warnings about records that were skipped, merged or trimmed."""
    facts = report.splits["all"]
    if facts["skipped"]:
        report.warnings.append(f"{catalog.file}: {facts['skipped']} records skipped: {facts['skipped_by_reason']}")
    if catalog.merged_duplicates:
        report.warnings.append(
            f"{catalog.file}: {catalog.merged_duplicates} images listed more than once; their captions were merged"
        )
    if catalog.empty_captions:
        report.warnings.append(f"{catalog.file}: {catalog.empty_captions} empty captions dropped")


def judge_splits(report: AuditReport, catalog: Catalog, sampler_mode: str) -> None:
    """Hard errors for splits that cannot train or be scored."""
    for split in ("train", "val"):
        if not catalog.splits[split]:
            report.errors.append(f"{catalog.file}: split '{split}' has no images (check the split values)")
    if not catalog.splits["test"]:
        report.warnings.append(f"{catalog.file}: split 'test' has no images; test/* metrics will be missing")
    if sampler_mode == "k_captions" and report.splits["train"]["max_captions"] == 1:
        report.warnings.append(
            "train: every image has one caption, so data.sampler=k_captions repeats it k times per batch"
        )


def judge_batches(report: AuditReport, masking: ContrastiveMasking, sampler: CaptionBatchSampler) -> None:
    """The error this task exists for: captions of one image in a batch that the loss treats as negatives."""
    negatives = report.splits["train"]["same_image_negatives_per_batch"]
    if negatives == 0:
        return
    report.errors.append(
        f"train: batches hold several captions of one image (data.sampler={sampler.mode}, k={sampler.k}) but "
        f"masking={type(masking).__name__} gives each pair an id of its own: {negatives:.1f} same-image pairs per "
        "batch are trained as negatives, the collapse of ids taken from positions "
        "(use masking=same_image, or data.sampler=unique_images)"
    )


def health_stats(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    image_ids: torch.Tensor,
    caption_ids: torch.Tensor,
    logit_scale: torch.Tensor,
) -> dict[str, float]:
    """Collapse statistics of one batch of L2-normalised embeddings.

    `img_std` / `txt_std`: per-dimension std, averaged over dimensions (about 1/sqrt(d) when the embeddings spread
    over the sphere, towards 0 in collapse). `pos_neg_gap`: mean cosine of same-image pairs minus mean cosine of
    pairs of different images. `unique_ids`: distinct images among the batch's captions.
    """
    images, texts = image_embeds.detach().float(), text_embeds.detach().float()
    same_image = image_ids[:, None] == caption_ids[None, :]
    similarity = images @ texts.T
    stats = {
        "img_std": float(images.std(0).mean()),
        "txt_std": float(texts.std(0).mean()),
        "logit_scale": float(logit_scale),
        "unique_ids": float(caption_ids.unique().numel()),
    }
    if same_image.any() and not same_image.all():
        stats["pos_neg_gap"] = float(similarity[same_image].mean() - similarity[~same_image].mean())
    return stats


def health_alerts(
    stats: dict[str, float], embed_dim: int, *, std_ratio: float, max_logit_scale: float
) -> dict[str, str]:
    """Embedding collapse (std far below 1/sqrt(d)) and a logit scale pinned at its clamp.

    The keyword-only arguments are the `contrastive:` thresholds of `conf/callbacks/health.yaml`.
    """
    floor = std_ratio / math.sqrt(embed_dim)
    alerts = {}
    for name, tower in (("img_std", "image"), ("txt_std", "text")):
        if stats[name] < floor:
            alerts[f"{tower}_collapse"] = (
                f"per-dimension std of the {tower} embeddings is {stats[name]:.4f}, below {std_ratio:g} x "
                f"1/sqrt({embed_dim}) = {floor:.4f}: they are collapsing to one point (check the positives: audit "
                "same_image_negatives_per_batch, masking=same_image; lower the learning rate)"
            )
    if stats["logit_scale"] >= max_logit_scale:
        alerts["logit_scale_at_clamp"] = (
            f"logit scale {stats['logit_scale']:.1f} is at its clamp: the softmax is saturated and the gradients of "
            "most pairs vanish; often seen with collapse or with too few real negatives (check health/pos_neg_gap)"
        )
    return alerts
