"""PCK speed: vigil's vectorised PCK metric vs a straightforward per-query reference, on 20k MP-100-like queries.

The reference scores one query at a time with NumPy, as mmpose's CAPE evaluation calls `keypoint_pck_accuracy`
per query (distances normalised by the bbox's longer side, -1 for invalid keypoints, mean over valid ones, 0 for
a query without any), then averages per category. Both must give the same numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from benchmarks.common import Row, median, spread, timed
from vigil.tasks.cape.metrics import MPCK_THRESHOLDS, PCK

NAME = "pck"
QUERIES = 20_000
CATEGORIES = 20
MAX_KEYPOINTS = 68
BATCH = 64


def queries(seed: int = 0) -> dict[str, torch.Tensor]:
    """Padded queries of 8..68 keypoints (MP-100's range), predictions within 0..0.35 of the bbox size."""
    generator = torch.Generator().manual_seed(seed)
    counts = torch.randint(8, MAX_KEYPOINTS + 1, (QUERIES,), generator=generator)
    padding = torch.arange(MAX_KEYPOINTS)[None, :] < counts[:, None]
    valid = padding & (torch.rand(QUERIES, MAX_KEYPOINTS, generator=generator) < 0.8)
    bbox = torch.cat([torch.zeros(QUERIES, 2), 20 + 200 * torch.rand(QUERIES, 2, generator=generator)], dim=1)
    truth = 300 * torch.rand(QUERIES, MAX_KEYPOINTS, 2, generator=generator)
    angle = 2 * torch.pi * torch.rand(QUERIES, MAX_KEYPOINTS, generator=generator)
    radius = 0.35 * torch.rand(QUERIES, MAX_KEYPOINTS, generator=generator) * bbox[:, 2:].amax(dim=1, keepdim=True)
    offset = torch.stack([angle.cos(), angle.sin()], dim=-1) * radius.unsqueeze(-1)
    category = torch.randint(CATEGORIES, (QUERIES,), generator=generator)
    return {"predicted": truth + offset, "truth": truth, "valid": valid, "bbox": bbox, "category": category}


def reference_pck(data: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per query with NumPy (mmpose's per-query call), then per category: `pck` at 0.2 and `mpck`."""
    predicted, truth, valid = data["predicted"].numpy(), data["truth"].numpy(), data["valid"].numpy()
    bbox, category = data["bbox"].numpy(), data["category"].numpy()
    by_category: dict[int, list[list[float]]] = {}
    for i in range(QUERIES):
        distances = np.full(MAX_KEYPOINTS, -1.0)
        size = max(bbox[i, 2], bbox[i, 3])
        distances[valid[i]] = np.linalg.norm(predicted[i, valid[i]] - truth[i, valid[i]], axis=-1) / size
        scored = distances[distances != -1]
        scores = [float((scored < t).mean()) if scored.size else 0.0 for t in MPCK_THRESHOLDS]
        by_category.setdefault(int(category[i]), []).append(scores)
    per_category = np.array([np.mean(rows, axis=0) for rows in by_category.values()])
    return {"pck": float(per_category[:, MPCK_THRESHOLDS.index(0.2)].mean()), "mpck": float(per_category.mean())}


def vigil_pck(data: dict[str, torch.Tensor]) -> dict[str, float]:
    """vigil's PCK metric, fed in evaluation-sized batches."""
    metric = PCK()
    for start in range(0, QUERIES, BATCH):
        rows = slice(start, start + BATCH)
        metric.update(
            data["predicted"][rows],
            data["truth"][rows],
            data["valid"][rows],
            data["bbox"][rows],
            data["category"][rows],
        )
    result = metric.compute()
    return {"pck": float(result["pck"]), "mpck": float(result["mpck"])}


def pck(args: Any) -> list[Row]:
    """Median seconds of each implementation over `args.rounds` alternated rounds, the speed-up, and agreement."""
    torch.set_num_threads(args.threads)
    data = queries()
    ours, theirs, differences = [], [], []
    for _ in range(args.rounds):
        seconds, got = timed(vigil_pck, data)
        ours.append(seconds)
        seconds, expected = timed(reference_pck, data)
        theirs.append(seconds)
        differences.append(max(abs(got[name] - expected[name]) for name in expected))
    shape = f"{QUERIES} queries, 8..{MAX_KEYPOINTS} keypoints, {CATEGORIES} categories, batches of {BATCH}"
    ratios = [t / o for o, t in zip(ours, theirs, strict=True)]
    return [
        Row(NAME, "vigil PCK metric", median(ours), "s", note=shape, samples=ours),
        Row(NAME, "per-query NumPy reference", median(theirs), "s", samples=theirs),
        Row(NAME, "speed-up", median(ratios), "x", note=f"rounds {spread(ratios, 1)}", samples=ratios),
        Row(NAME, "max |difference| in PCK, mPCK", max(differences), "", goal="0", note=f"pck {got['pck']:.4f}"),
    ]
