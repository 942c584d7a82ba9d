"""Retrieval recall against a plain-loop reference that sorts, including ties and uneven caption counts."""

from __future__ import annotations

import pytest
import torch

from vigil.tasks.contrastive.metrics import RetrievalRecall

KS = (1, 5, 10)


def loop_recall(queries, query_ids, items, item_ids, k):
    """Percent of queries whose first correct item, in a sort by score where a tie puts wrong items first, is in
    the top k. Queries without a correct item are left out."""
    hits, counted = 0, 0
    for query, query_id in zip(queries, query_ids, strict=True):
        scored = []
        for item, item_id in zip(items, item_ids, strict=True):
            score = sum(a * b for a, b in zip(query, item, strict=True))
            scored.append((score, item_id == query_id))
        if not any(correct for _, correct in scored):
            continue
        # Highest score first; among equal scores, wrong (False) before correct (True).
        ordered = sorted(scored, key=lambda pair: (-pair[0], pair[1]))
        position = next(index for index, (_, correct) in enumerate(ordered) if correct)
        hits += position < k
        counted += 1
    return 100.0 * hits / counted


def reference(images, image_ids, texts, caption_ids):
    results = {}
    for k in KS:
        results[f"r{k}_i2t"] = loop_recall(images, image_ids, texts, caption_ids, k)
    for k in KS:
        results[f"r{k}_t2i"] = loop_recall(texts, caption_ids, images, image_ids, k)
    results["rsum"] = sum(results.values())
    return results


def computed(images, image_ids, texts, caption_ids, chunk_size=1024, batches=1, counts=False):
    metric = RetrievalRecall(KS, chunk_size)
    image_parts = torch.tensor_split(torch.arange(len(image_ids)), batches)
    for part in image_parts:
        chosen = set(part.tolist())
        captions = [i for i, c in enumerate(caption_ids) if image_ids.index(c) in chosen]
        metric.update(
            torch.tensor(images)[part],
            torch.tensor(image_ids)[part],
            torch.tensor(texts)[captions],
            torch.tensor(caption_ids)[captions],
        )
    values = {name: value.item() for name, value in metric.compute().items()}
    return values if counts else {name: value for name, value in values.items() if name not in ("samples", "captions")}


def uneven_split(seed: int = 0):
    """12 images with 1 to 6 captions each, integer-valued 3-d embeddings (many exact ties)."""
    generator = torch.Generator().manual_seed(seed)
    image_ids = [10 * i + 3 for i in range(12)]
    counts = [1 + i % 6 for i in range(12)]
    caption_ids = [image_id for image_id, count in zip(image_ids, counts, strict=True) for _ in range(count)]
    images = torch.randint(-2, 3, (12, 3), generator=generator).float().tolist()
    texts = torch.randint(-2, 3, (len(caption_ids), 3), generator=generator).float().tolist()
    return images, image_ids, texts, caption_ids


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_recall_matches_the_loop_reference_with_ties_and_uneven_caption_counts(seed):
    data = uneven_split(seed)
    expected = reference(*data)
    got = computed(*data)
    assert got == pytest.approx(expected, abs=1e-4)


def test_chunks_and_batches_do_not_change_the_result():
    data = uneven_split(5)
    assert computed(*data, chunk_size=3, batches=4) == pytest.approx(computed(*data), abs=1e-5)


def test_a_tie_counts_against_the_hit():
    # Caption 1 is closest to its image: a hit. Caption 2 scores 1 with its image and with image 3, caption 3
    # scores 1 with all three images: ties, so both miss at R@1.
    images = [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]
    texts = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    got = computed(images, [1, 2, 3], texts, [1, 2, 3])
    assert got["r1_t2i"] == pytest.approx(100 / 3)
    assert got["r5_t2i"] == pytest.approx(100.0)


def test_collapsed_embeddings_score_zero_not_one_hundred():
    images = [[1.0, 0.0]] * 20
    texts = [[1.0, 0.0]] * 100
    got = computed(images, list(range(20)), texts, [i // 5 for i in range(100)])
    assert got["r1_i2t"] == 0.0 and got["r1_t2i"] == 0.0 and got["r10_t2i"] == 0.0


def test_an_image_hits_with_any_of_its_captions():
    # Image 0's captions: one far away, one closest; image->text R@1 counts the hit.
    images = [[1.0, 0.0], [0.0, 1.0]]
    texts = [[-1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]
    got = computed(images, [0, 1], texts, [0, 0, 1])
    assert got["r1_i2t"] == 100.0
    assert got["r1_t2i"] == pytest.approx(200 / 3)


def test_samples_and_captions_count_what_was_scored():
    images, image_ids, texts, caption_ids = uneven_split()
    got = computed(images, image_ids, texts, caption_ids, batches=3, counts=True)
    assert got["samples"] == len(image_ids) == 12
    assert got["captions"] == len(caption_ids)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric RetrievalRecall was called before")
def test_empty_metric_computes_nothing():
    assert RetrievalRecall().compute() == {}
