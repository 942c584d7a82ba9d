"""Samplers shared by every task's DataModule."""

from __future__ import annotations

import torch.distributed as dist
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Dataset, Sampler


def evaluation_sampler(dataset: Dataset) -> Sampler | None:
    """Under DDP, shard an evaluation set across ranks without padding, so every sample is scored exactly once.

    Lightning's default DistributedSampler repeats samples to even out the ranks, which biases val/test metrics.
    Outside DDP, None (sequential order).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return UnrepeatedDistributedSampler(dataset, shuffle=False)
