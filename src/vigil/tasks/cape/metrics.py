"""PCK (with NME, AUC and EPE) for CAPE, as the MP-100 protocol computes it, as a torchmetrics Metric (per-query
scores synced across DDP).

Written here because torchmetrics has no keypoint metric, and mmpose's `keypoint_pck_accuracy` scores one batch of
identical categories at a time (and its CAPE decode loop is correct only at batch size 1). Rules, stated once:
- A keypoint is scored when it is valid: labelled in the query and in every support shot, and not padding.
- It is correct when its distance to the ground truth, in ORIGINAL image pixels, is below
  threshold x max(w, h) of the query's ground-truth bbox (strictly below, as mmpose).
- A query's score is the fraction of its valid keypoints that are correct; a query with no valid keypoint scores
  0, as mmpose's `keypoint_pck_accuracy` returns for it, and still counts in the means.
- `pck`: the mean over categories of each category's mean over its queries (`pck_query_mean`: the mean over all
  queries, mmpose's report; the two agree when every category has as many queries).
- `mpck`: the same category mean, averaged over the thresholds 0.05, 0.10, 0.15, 0.20, 0.25.
- `nme`, `auc`, `epe`: PoseAnything's report (mmpose's `keypoint_nme`, `keypoint_auc`, `keypoint_epe` on one query
  at a time, then the mean over queries). NME: the mean distance of the valid keypoints / max(w, h) of the bbox;
  AUC: the mean PCK over the thresholds 0, 0.05, ..., 0.95 of that size; EPE: the mean distance in pixels. A query
  with no valid keypoint scores 0 in each, as mmpose returns.
- `samples`: the number of queries scored (after the DDP sync: over every rank), to prove each was scored once.
Every batch is scored at once (B x K x thresholds), for any batch size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

MPCK_THRESHOLDS = (0.05, 0.10, 0.15, 0.20, 0.25)
# mmpose's `keypoint_auc`: PCK at i / 20 for i = 0..19, averaged.
AUC_THRESHOLDS = tuple(i / 20 for i in range(20))
ERRORS = ("nme", "auc", "epe")


def query_scores(
    predicted: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, bbox: torch.Tensor, thresholds: torch.Tensor
) -> torch.Tensor:
    """B x T: per query and threshold, the fraction of valid keypoints closer than threshold x max(bbox w, h).

    `predicted`, `target`: B x K x 2 original pixels; `valid`: B x K; `bbox`: B x 4 `[x, y, w, h]`.
    """
    size = bbox[:, 2:].amax(dim=1).double()
    distance = (predicted.double() - target.double()).norm(dim=-1) / size[:, None]
    hits = (distance.unsqueeze(-1) < thresholds) & valid.bool().unsqueeze(-1)
    return hits.sum(dim=1).double() / valid.sum(dim=1, keepdim=True).clamp_min(1).double()


def query_errors(
    predicted: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, bbox: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per query (B): `nme`, `auc` and `epe` as documented above; same arguments as `query_scores`."""
    valid = valid.bool()
    count = valid.sum(dim=1).clamp_min(1).double()
    distance = (predicted.double() - target.double()).norm(dim=-1) * valid
    size = bbox[:, 2:].amax(dim=1).double()
    thresholds = torch.tensor(AUC_THRESHOLDS, dtype=torch.float64, device=predicted.device)
    return {
        "nme": distance.sum(dim=1) / size / count,
        "auc": query_scores(predicted, target, valid, bbox, thresholds).mean(dim=1),
        "epe": distance.sum(dim=1) / count,
    }


class PCK(Metric):
    """PCK@`threshold` per category and its mean over categories, the query mean, and mPCK."""

    full_state_update = False

    def __init__(self, threshold: float = 0.2, mpck_thresholds: Sequence[float] = MPCK_THRESHOLDS) -> None:
        super().__init__()
        self.thresholds = tuple(sorted({float(threshold), *map(float, mpck_thresholds)}))
        self.main = self.thresholds.index(float(threshold))
        self.mpck = [self.thresholds.index(float(t)) for t in mpck_thresholds]
        for name in ("scores", "categories", *ERRORS):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        predicted: torch.Tensor,
        target: torch.Tensor,
        valid: torch.Tensor,
        bbox: torch.Tensor,
        category: torch.Tensor,
    ) -> None:
        """Score a batch of queries (see `query_scores`) and remember their categories."""
        # Double precision throughout: 0.2 in float32 is slightly above 0.2, which would count a distance of 0.2.
        thresholds = torch.tensor(self.thresholds, dtype=torch.float64, device=predicted.device)
        self.scores.append(query_scores(predicted.detach(), target, valid, bbox, thresholds))
        self.categories.append(category)
        for name, values in query_errors(predicted.detach(), target, valid, bbox).items():
            getattr(self, name).append(values)

    def compute(self) -> dict[str, torch.Tensor]:
        """`pck`, `mpck`, `pck_query_mean`, `nme`, `auc`, `epe`, `samples` (the queries scored, on every rank
        together), and `category_ids` with their `category_pck` (empty when no query)."""
        if isinstance(self.scores, list) and not self.scores:
            return {}
        scores, categories = dim_zero_cat(self.scores), dim_zero_cat(self.categories)
        ids, inverse = categories.unique(return_inverse=True)
        sums = scores.new_zeros(len(ids), len(self.thresholds)).index_add_(0, inverse, scores)
        per_category = sums / torch.bincount(inverse, minlength=len(ids)).unsqueeze(1)
        return {
            "pck": per_category[:, self.main].mean().float(),
            "mpck": per_category[:, self.mpck].mean().float(),
            "pck_query_mean": scores[:, self.main].mean().float(),
            **{name: dim_zero_cat(getattr(self, name)).mean().float() for name in ERRORS},
            "samples": scores.new_tensor(len(scores)).float(),
            "category_ids": ids,
            "category_pck": per_category[:, self.main].float(),
        }
