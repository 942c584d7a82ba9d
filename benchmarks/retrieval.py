"""Retrieval-metric speed: vigil's chunked, vectorised RetrievalRecall vs a straightforward per-query reference.

Both score the Flickr30k 1K-test shape (1000 images with 5 captions each) from the same random embeddings. The
reference ranks one query at a time with a full sort, as a first implementation would; the two must agree.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import Row, median, spread, timed
from vigil.tasks.contrastive.metrics import RetrievalRecall

NAME = "retrieval"
IMAGES = 1000
CAPTIONS_PER_IMAGE = 5
DIM = 256
KS = (1, 5, 10)


def embeddings(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit image and caption embeddings, captions near their image so that recall is neither 0 nor 100."""
    generator = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(IMAGES, DIM, generator=generator), dim=1)
    image_ids = torch.arange(IMAGES)
    caption_ids = image_ids.repeat_interleave(CAPTIONS_PER_IMAGE)
    noise = torch.randn(len(caption_ids), DIM, generator=generator)
    texts = F.normalize(images[caption_ids] + 6 * noise / DIM**0.5, dim=1)
    return images, image_ids, texts, caption_ids


def first_correct_positions(
    queries: torch.Tensor, query_ids: torch.Tensor, items: torch.Tensor, item_ids: torch.Tensor
) -> list[int]:
    """For each query, sort every item by score and find where the first correct one lands."""
    positions = []
    for query, query_id in zip(queries, query_ids, strict=True):
        order = torch.argsort(items @ query, descending=True, stable=True)
        positions.append(int((item_ids[order] == query_id).nonzero()[0]))
    return positions


def reference_recall(
    images: torch.Tensor, image_ids: torch.Tensor, texts: torch.Tensor, caption_ids: torch.Tensor
) -> dict[str, float]:
    """R@K both ways and RSUM, one query at a time."""
    ranks = {
        "i2t": first_correct_positions(images, image_ids, texts, caption_ids),
        "t2i": first_correct_positions(texts, caption_ids, images, image_ids),
    }
    results = {f"r{k}_{way}": 100 * sum(r < k for r in rank) / len(rank) for way, rank in ranks.items() for k in KS}
    results["rsum"] = sum(results.values())
    return results


def vigil_recall(
    images: torch.Tensor, image_ids: torch.Tensor, texts: torch.Tensor, caption_ids: torch.Tensor
) -> dict[str, float]:
    """R@K both ways and RSUM with vigil's metric, fed in evaluation-sized batches of 32 images."""
    metric = RetrievalRecall(KS)
    for start in range(0, IMAGES, 32):
        captions = slice(start * CAPTIONS_PER_IMAGE, (start + 32) * CAPTIONS_PER_IMAGE)
        metric.update(images[start : start + 32], image_ids[start : start + 32], texts[captions], caption_ids[captions])
    return {name: float(value) for name, value in metric.compute().items()}


def retrieval(args: Any) -> list[Row]:
    """Median seconds of each implementation over `args.rounds` alternated rounds, the speed-up, and agreement."""
    torch.set_num_threads(args.threads)
    data = embeddings()
    ours, theirs, differences = [], [], []
    for _ in range(args.rounds):
        seconds, got = timed(vigil_recall, *data)
        ours.append(seconds)
        seconds, expected = timed(reference_recall, *data)
        theirs.append(seconds)
        differences.append(max(abs(got[name] - expected[name]) for name in expected))
    shape = f"{IMAGES * CAPTIONS_PER_IMAGE} captions x {IMAGES} images, d={DIM}, {args.threads} threads"
    ratios = [t / o for o, t in zip(ours, theirs, strict=True)]
    return [
        Row(NAME, "vigil RetrievalRecall", median(ours), "s", note=shape, samples=ours),
        Row(NAME, "per-query sort reference", median(theirs), "s", samples=theirs),
        Row(NAME, "speed-up", median(ratios), "x", note=f"rounds {spread(ratios, 1)}", samples=ratios),
        Row(NAME, "max |difference| in R@K", max(differences), "points", goal="0", note=f"rsum {got['rsum']:.1f}"),
    ]
