"""Training-loader cost: vigil's ResumableLoader (seeded per-sample augmentation, resumable position) vs torch's
DataLoader with `shuffle=True` on the same segmentation dataset (flips on 128 x 128 images, read from disk).

The difference is the price of exact resume and worker-independent augmentation: three generators saved, seeded
and restored per sample, and one key per index.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch
from torch.utils.data import DataLoader

from benchmarks.common import Row, median, spread, timed
from vigil.core.loading import ResumableLoader, SeededSamples
from vigil.core.sampling import EpochShuffle
from vigil.tasks.segmentation.data import SegmentationDataModule

NAME = "loader"
IMAGES = 400
BATCH = 16


def one_epoch(loader: DataLoader) -> int:
    """Batches of one full pass."""
    return sum(1 for _ in loader)


def loader(args: Any) -> list[Row]:
    """Median seconds per epoch of each loader over alternated rounds, and their ratio."""
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as cache:
        data = SegmentationDataModule(
            root=cache,
            image_size=(128, 128),
            batch_size=BATCH,
            synthetic={"num_images": IMAGES, "image_size": 128},
        )
        data.prepare_data()
        data.setup()
        dataset = data.dataset("train")
        collate = data.collate("train")
        plain = DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True, collate_fn=collate)
        ours_loader = ResumableLoader(
            SeededSamples(dataset, 0),
            batch_size=BATCH,
            sampler=EpochShuffle(len(dataset)),
            drop_last=True,
            collate_fn=collate,
        )
        ours, theirs = [], []
        for _ in range(args.rounds):
            seconds, _ = timed(one_epoch, ours_loader)
            ours.append(seconds)
            seconds, _ = timed(one_epoch, plain)
            theirs.append(seconds)
        samples = len(dataset)
    ratios = [o / t for o, t in zip(ours, theirs, strict=True)]
    shape = f"{samples} training images, 128 x 128, batches of {BATCH}, no workers"
    return [
        Row(NAME, "ResumableLoader epoch", median(ours), "s", note=shape, samples=ours),
        Row(NAME, "torch DataLoader epoch", median(theirs), "s", samples=theirs),
        Row(
            NAME,
            "time ratio (ours / torch)",
            median(ratios),
            "x",
            goal="<= 1.05",
            note=f"rounds {spread(ratios, 3)}",
            samples=ratios,
        ),
    ]
