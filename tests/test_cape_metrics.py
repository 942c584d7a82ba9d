"""PCK against a plain-Python reference: ragged K, queries without a valid keypoint, several thresholds, per-category
and query means, and the merge of two ranks' states."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from vigil.tasks.cape.metrics import MPCK_THRESHOLDS, PCK


def random_queries(count: int, seed: int) -> list[dict]:
    """Queries of ragged K (3..9) in original pixels; some have no valid keypoint at all."""
    rng = random.Random(seed)
    queries = []
    for index in range(count):
        k = rng.randint(3, 9)
        w, h = rng.uniform(20, 200), rng.uniform(20, 200)
        size = max(w, h)
        truth = [(rng.uniform(0, 300), rng.uniform(0, 300)) for _ in range(k)]
        # Errors spread over 0..0.35 of the bbox size, so every threshold splits the keypoints.
        predicted = []
        for x, y in truth:
            angle, radius = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.35) * size
            predicted.append((x + radius * math.cos(angle), y + radius * math.sin(angle)))
        valid = [False] * k if index % 7 == 3 else [rng.random() < 0.8 for _ in range(k)]
        queries.append(
            {"truth": truth, "predicted": predicted, "valid": valid, "bbox": (1.0, 2.0, w, h), "category": index % 4}
        )
    return queries


def reference_pck(queries: list[dict], threshold: float) -> tuple[float, float]:
    """(mean over categories of per-category query means, mean over queries), one keypoint at a time."""
    scores, by_category = [], {}
    for query in queries:
        size = max(query["bbox"][2], query["bbox"][3])
        correct = counted = 0
        for (px, py), (tx, ty), valid in zip(query["predicted"], query["truth"], query["valid"], strict=True):
            if valid:
                counted += 1
                correct += math.hypot(px - tx, py - ty) / size < threshold
        score = correct / counted if counted else 0.0
        scores.append(score)
        by_category.setdefault(query["category"], []).append(score)
    category_means = [sum(s) / len(s) for s in by_category.values()]
    return sum(category_means) / len(category_means), sum(scores) / len(scores)


def as_batch(queries: list[dict]) -> tuple[torch.Tensor, ...]:
    """Padded tensors, as the data module's batches carry them (padding is invalid)."""
    k = max(len(q["truth"]) for q in queries)
    predicted = torch.zeros(len(queries), k, 2, dtype=torch.float64)
    truth = torch.zeros(len(queries), k, 2, dtype=torch.float64)
    valid = torch.zeros(len(queries), k, dtype=torch.bool)
    for row, query in enumerate(queries):
        count = len(query["truth"])
        predicted[row, :count] = torch.tensor(query["predicted"], dtype=torch.float64)
        truth[row, :count] = torch.tensor(query["truth"], dtype=torch.float64)
        valid[row, :count] = torch.tensor(query["valid"])
    bbox = torch.tensor([q["bbox"] for q in queries], dtype=torch.float64)
    return predicted, truth, valid, bbox, torch.tensor([q["category"] for q in queries])


def fed(queries: list[dict], batch_size: int) -> PCK:
    metric = PCK()
    for start in range(0, len(queries), batch_size):
        metric.update(*as_batch(queries[start : start + batch_size]))
    return metric


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_pck_equals_the_plain_loop_reference_for_any_batch_size(batch_size: int):
    queries = random_queries(60, seed=batch_size)
    result = fed(queries, batch_size).compute()
    category_mean, query_mean = reference_pck(queries, 0.2)
    assert result["pck"].item() == pytest.approx(category_mean, abs=1e-6)
    assert result["pck_query_mean"].item() == pytest.approx(query_mean, abs=1e-6)
    assert result["mpck"].item() == pytest.approx(
        sum(reference_pck(queries, t)[0] for t in MPCK_THRESHOLDS) / len(MPCK_THRESHOLDS), abs=1e-6
    )


def test_per_category_values_are_the_category_means():
    queries = random_queries(40, seed=3)
    result = fed(queries, 8).compute()
    assert result["category_ids"].tolist() == [0, 1, 2, 3]
    for category, value in zip(result["category_ids"].tolist(), result["category_pck"].tolist(), strict=True):
        expected, _ = reference_pck([q for q in queries if q["category"] == category], 0.2)
        assert value == pytest.approx(expected, abs=1e-6)


def test_query_without_valid_keypoint_scores_zero_and_counts():
    perfect = {"truth": [(5.0, 5.0)], "predicted": [(5.0, 5.0)], "valid": [True], "bbox": (0, 0, 10, 10), "category": 1}
    empty = {**perfect, "valid": [False]}
    result = fed([perfect, empty], 2).compute()
    assert result["pck"].item() == pytest.approx(0.5) and result["pck_query_mean"].item() == pytest.approx(0.5)


def test_threshold_is_strict_and_uses_the_longer_bbox_side():
    # A 100 x 40 bbox: 0.2 x 100 = 20 px. 19.9 px is correct, exactly 20 px is not.
    query = {"truth": [(0.0, 0.0), (0.0, 0.0)], "predicted": [(19.9, 0.0), (0.0, 20.0)], "valid": [True, True]}
    result = fed([{**query, "bbox": (0, 0, 100, 40), "category": 0}], 1).compute()
    assert result["pck"].item() == pytest.approx(0.5)


def test_merged_rank_states_equal_one_process_on_all_queries():
    queries = random_queries(50, seed=11)
    rank0, rank1 = fed(queries[::2], 6), fed(queries[1::2], 6)
    rank0.merge_state(rank1)
    merged, single = rank0.compute(), fed(queries, 50).compute()
    for name in ("pck", "mpck", "pck_query_mean", "nme", "auc", "epe"):
        assert merged[name].item() == pytest.approx(single[name].item(), abs=1e-6)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric PCK was called before")
def test_no_update_gives_no_values():
    assert PCK().compute() == {}


def mmpose_distances(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, normalize: np.ndarray) -> np.ndarray:
    """mmpose's `_calc_distances`: K x N normalised distances, -1 where masked out."""
    n, k, _ = pred.shape
    mask = mask.copy()
    mask[np.where((normalize == 0).sum(1))[0], :] = False
    distances = np.full((n, k), -1, dtype=np.float32)
    normalize = normalize.copy()
    normalize[np.where(normalize <= 0)] = 1e6
    distances[mask] = np.linalg.norm(((pred - gt) / normalize[:, None, :])[mask], axis=-1)
    return distances.T


def mmpose_pck(pred, gt, mask, thr, normalize) -> float:
    """mmpose's `keypoint_pck_accuracy` average (per-keypoint accuracies over the batch, then their mean)."""
    accuracies = []
    for row in mmpose_distances(pred, gt, mask, normalize):
        valid = row != -1
        accuracies.append((row[valid] < thr).sum() / valid.sum() if valid.sum() else -1)
    accuracies = np.array(accuracies)
    valid = accuracies[accuracies >= 0]
    return valid.mean() if len(valid) else 0


def mmpose_mean_distance(pred, gt, mask, normalize) -> float:
    """mmpose's `keypoint_nme` (and `keypoint_epe` with a normaliser of ones)."""
    distances = mmpose_distances(pred, gt, mask, normalize)
    valid = distances[distances != -1]
    return valid.sum() / max(1, len(valid))


def poseanything_report(queries: list[dict]) -> dict[str, float]:
    """PoseAnything's `_report_metric`: each query alone through mmpose's functions, then the mean over queries."""
    results = {"PCK": [], "NME": [], "AUC": [], "EPE": []}
    for query in queries:
        pred = np.array([query["predicted"]], dtype=np.float32)
        gt = np.array([query["truth"]], dtype=np.float32)
        mask = np.array([query["valid"]])
        size = max(query["bbox"][2:])
        box = np.array([[size, size]])
        results["PCK"].append(mmpose_pck(pred, gt, mask, 0.2, box))
        results["NME"].append(mmpose_mean_distance(pred, gt, mask, box))
        results["AUC"].append(np.mean([mmpose_pck(pred, gt, mask, i / 20, box) for i in range(20)]))
        results["EPE"].append(mmpose_mean_distance(pred, gt, mask, np.ones((1, 2), dtype=np.float32)))
    return {name: float(np.mean(values)) for name, values in results.items()}


def test_pck_nme_auc_epe_equal_poseanythings_report_through_mmpose_functions():
    queries = random_queries(60, seed=5)
    result = fed(queries, 16).compute()
    reference = poseanything_report(queries)
    # The reference computes in float32, as mmpose does.
    assert result["pck_query_mean"].item() == pytest.approx(reference["PCK"], abs=1e-5)
    assert result["nme"].item() == pytest.approx(reference["NME"], rel=1e-4)
    assert result["auc"].item() == pytest.approx(reference["AUC"], abs=1e-5)
    assert result["epe"].item() == pytest.approx(reference["EPE"], rel=1e-4)
