"""CAPE guardrails: the audit of categories and episodes before fit (`audit_splits`), and the supervised-keypoint
monitor during fit (`health_stats`, judged by `health_alerts`)."""

from __future__ import annotations

from collections import Counter
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from vigil.core.guardrails import AuditReport
from vigil.tasks.cape.episodes import TrainingEpisodes
from vigil.tasks.cape.masking import CapeMasking
from vigil.tasks.cape.model import CapeOutput
from vigil.tasks.cape.records import SplitFile

AUDITED_EPISODES = 200


def audit_splits(
    files: dict[str, SplitFile], masking: CapeMasking, shots: int, queries: int, sampler: TrainingEpisodes
) -> AuditReport:
    """Per split and category: instances (`samples` per split), K, visibility counts and fractions; episodes that
    cannot be formed; categories shared between splits; and what the masking supervises in the training episodes."""
    report = AuditReport()
    policy = files["train"].policy
    report.splits["all"] = {"skipped": len(policy.skipped), "skipped_by_reason": policy.skipped_by_reason()}
    if policy.skipped:
        report.warnings.append(f"{len(policy.skipped)} annotations skipped: {policy.skipped_by_reason()}")
    for split, file in files.items():
        report.splits[split] = split_summary(file)
        judge_episodes(report, split, file, shots, queries)
    judge_disjoint(report, files)
    if sampler.categories:
        report.splits["train"].update(supervision_summary(files["train"], masking, sampler))
        judge_supervision(report, masking)
    return report


def split_summary(file: SplitFile) -> dict[str, Any]:
    """Instances (`samples`), categories, K range and visibility counts of one split, and the same per category."""
    per_category = {}
    totals: Counter[int] = Counter()
    for category_id in file.used_categories:
        category = file.categories[category_id]
        members = [file.instances[i] for i in file.instances_by_category[category_id]]
        counts = Counter(int(v) for instance in members for v in instance.visibility)
        totals.update(counts)
        per_category[category.name] = {
            "instances": len(members),
            "keypoints": category.num_keypoints,
            **visibility_facts(counts),
        }
    sizes = [file.categories[c].num_keypoints for c in file.used_categories]
    return {
        "file": str(file.file),
        "categories": len(per_category),
        "samples": len(file.instances),
        "min_keypoints": min(sizes, default=0),
        "max_keypoints": max(sizes, default=0),
        **visibility_facts(totals),
        "per_category": per_category,
    }


def visibility_facts(counts: Counter[int]) -> dict[str, float]:
    """v=0/1/2 counts, the labelled fraction (v > 0) and the visible fraction (v = 2) of all keypoints."""
    total = max(sum(counts.values()), 1)
    return {
        "v0": counts[0],
        "v1": counts[1],
        "v2": counts[2],
        "labelled_fraction": (counts[1] + counts[2]) / total,
        "visible_fraction": counts[2] / total,
    }


def judge_episodes(report: AuditReport, split: str, file: SplitFile, shots: int, queries: int) -> None:
    """Categories too small for an episode are left out (warning); a split with no episode at all is an error."""
    sizes = {file.categories[c].name: len(file.instances_by_category[c]) for c in file.used_categories}
    too_small = sorted(name for name, count in sizes.items() if count < shots + 1)
    few = sorted(name for name, count in sizes.items() if shots + 1 <= count < shots + queries)
    report.splits[split]["categories_too_small"] = too_small
    if too_small:
        report.warnings.append(
            f"{split}: {len(too_small)} categories have fewer than shots+1={shots + 1} instances and form no "
            f"episode: {', '.join(too_small)}"
        )
    if few and split != "train":
        report.warnings.append(
            f"{split}: {len(few)} categories have fewer than shots+queries={shots + queries} instances; their "
            f"episodes hold fewer queries: {', '.join(few)}"
        )
    if len(too_small) == len(sizes):
        message = f"{split}: no category has shots+1={shots + 1} instances, so no episode can be formed ({file.file})"
        (report.warnings if split == "test" else report.errors).append(message)


def judge_disjoint(report: AuditReport, files: dict[str, SplitFile]) -> None:
    """A category in two splits is not category-agnostic evaluation: an error. Splits that read one file (as val
    and test do in CapeFormer's cross-supercategory protocol) are one split here, with a warning."""
    seen: dict[int, str] = {}
    first_reader: dict[Path, str] = {}
    for split, file in files.items():
        same = first_reader.setdefault(file.file.resolve(), split)
        if same != split:
            report.warnings.append(
                f"{split} reads the same file as {same} ({file.file}): the checkpoint is chosen on the categories "
                "it is tested on"
            )
            continue
        for category_id in file.used_categories:
            if category_id in seen:
                name = file.categories[category_id].name
                report.errors.append(
                    f"category '{name}' (id {category_id}) has instances in both {seen[category_id]} and {split}: "
                    "CAPE splits must be category-disjoint (check data.split and the files)"
                )
            seen.setdefault(category_id, split)


def supervision_summary(file: SplitFile, masking: CapeMasking, sampler: TrainingEpisodes) -> dict[str, float]:
    """Means over the first training episodes (annotated visibility, before cropping): keypoints per episode,
    those the masking counts, and those it counts although unlabelled in the query or a support."""
    real, counted, unlabelled_counted = [], [], []
    for episode in islice(iter(sampler), AUDITED_EPISODES):
        query = torch.from_numpy(file.instances[episode.query].visibility)[None]
        supports = torch.stack([torch.from_numpy(file.instances[i].visibility) for i in episode.supports])[None]
        mask = torch.ones_like(query, dtype=torch.bool)
        weight = masking(query, supports, mask) > 0
        labelled = (query > 0) & (supports > 0).all(dim=1)
        real.append(query.numel())
        counted.append(int(weight.sum()))
        unlabelled_counted.append(int((weight & ~labelled).sum()))
    episodes = max(len(real), 1)
    return {
        "keypoints_per_episode": sum(real) / episodes,
        "supervised_keypoints_per_episode": sum(counted) / episodes,
        "unlabelled_supervised_per_episode": sum(unlabelled_counted) / episodes,
    }


def judge_supervision(report: AuditReport, masking: CapeMasking) -> None:
    """No supervised keypoint is an error; unlabelled keypoints in the loss (masking=all) a warning."""
    facts = report.splits["train"]
    name = type(masking).__name__
    if facts["supervised_keypoints_per_episode"] == 0:
        report.errors.append(
            f"train: masking={name} counts no keypoint in the audited episodes: the loss would be zero "
            "(check the visibility values, or use masking=visible)"
        )
    if facts["unlabelled_supervised_per_episode"] > 0:
        report.warnings.append(
            f"train: masking={name} trains {facts['unlabelled_supervised_per_episode']:.2f} unlabelled keypoints per "
            "episode at their stored coordinates (often 0,0) (use masking=visible unless this is the ablation)"
        )


def chance_loss(
    loss: torch.nn.Module, output: CapeOutput, target_keypoints: torch.Tensor, weight: torch.Tensor
) -> float:
    """The loss of a prediction that ignores the images: every keypoint at the crop centre, uniform heatmaps."""
    centre = torch.full_like(output.keypoints, 0.5)
    uninformed = CapeOutput(keypoints=centre, heatmaps=torch.zeros_like(output.heatmaps), initial_keypoints=centre)
    return float(loss(uninformed, target_keypoints, weight))


def health_stats(weight: torch.Tensor, keypoint_mask: torch.Tensor, keypoints: torch.Tensor) -> dict[str, float]:
    """Per training batch: `supervised_kpts` (keypoints the loss counts), their share of the real keypoints, and
    `pred_std`, the spread of the predicted coordinates over real keypoints (near 0 when predictions collapse)."""
    real = keypoint_mask.sum().clamp_min(1)
    return {
        "supervised_kpts": float(weight.sum()),
        "supervised_fraction": float(weight.sum() / real),
        "pred_std": float(keypoints[keypoint_mask].std(dim=0).mean()) if keypoint_mask.sum() > 1 else 0.0,
    }


def health_alerts(stats: dict[str, float], *, min_supervised_kpts: float) -> dict[str, str]:
    """An alert when a batch supervises fewer than `min_supervised_kpts` keypoints (no gradient from it)."""
    if stats["supervised_kpts"] >= min_supervised_kpts:
        return {}
    return {
        "no_supervised_keypoints": (
            f"{stats['supervised_kpts']:.0f} supervised keypoints in the batch: the loss has nothing to learn from "
            "(check the visibility values in the data, the masking, and that augmentation keeps keypoints in the crop)"
        )
    }
