"""The answer loss: next-token cross-entropy over the supervised labels, averaged over supervised tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vigil.tasks.vqa.masking import IGNORE_INDEX


def predicting_positions(labels: torch.Tensor) -> torch.Tensor:
    """The positions (batch x length, boolean) whose next token is supervised: the only logits the loss reads.

    A training batch supervises a few answer tokens of each row, so the model computes its vocabulary-sized logits
    there alone (transformers' `logits_to_keep` mask) rather than at every prompt and image token.
    """
    positions = torch.zeros_like(labels, dtype=torch.bool)
    positions[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return positions


class TokenCrossEntropy(nn.Module):
    """Cross-entropy of each supervised token given the tokens before it (logits shifted by one, as causal LMs do).

    The mean is over the batch's supervised tokens, so a long answer weighs more than a short one, as in
    transformers' own loss. A batch without any supervised token gives a zero loss (still attached to the graph,
    so every rank takes part in the backward pass); the health monitor reports such batches.
    """

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """`logits` for `labels` (batch x length, IGNORE_INDEX where not supervised): batch x length x vocab, or
        those of the `predicting_positions(labels)` alone, in row order (supervised tokens x vocab)."""
        following = labels[:, 1:]
        wanted = following[following != IGNORE_INDEX]
        if logits.ndim == 3:
            logits = logits[predicting_positions(labels)]
        if logits.shape[0] != wanted.shape[0]:
            raise ValueError(
                f"{logits.shape[0]} rows of logits for {wanted.shape[0]} supervised tokens: pass every position's "
                "logits, or those of predicting_positions(labels)"
            )
        if not wanted.numel():
            return logits.sum() * 0.0
        # Only the supervised rows are cast to float32: a large vocabulary makes the full logits the biggest tensor.
        return F.cross_entropy(logits.float(), wanted)
