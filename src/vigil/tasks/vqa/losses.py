"""The answer loss: next-token cross-entropy over the supervised labels, averaged over supervised tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vigil.tasks.vqa.masking import IGNORE_INDEX


class TokenCrossEntropy(nn.Module):
    """Cross-entropy of each supervised token given the tokens before it (logits shifted by one, as causal LMs do).

    The mean is over the batch's supervised tokens, so a long answer weighs more than a short one, as in
    transformers' own loss. A batch without any supervised token gives a zero loss (still attached to the graph,
    so every rank takes part in the backward pass); the health monitor reports such batches.
    """

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """`logits` (batch x length x vocab) for `labels` (batch x length, IGNORE_INDEX where not supervised)."""
        wanted = labels[:, 1:].flatten()
        supervised = wanted != IGNORE_INDEX
        if not supervised.any():
            return logits.sum() * 0.0
        # Only the supervised rows are cast to float32: a large vocabulary makes the full logits the biggest tensor.
        predicted = logits[:, :-1].flatten(0, 1)[supervised].float()
        return F.cross_entropy(predicted, wanted[supervised])
