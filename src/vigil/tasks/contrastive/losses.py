"""Contrastive losses over a batch gathered from every rank: `loss(image_embeds, text_embeds, positives, scale)`.

Embeddings are L2-normalised (N_img x d, N_txt x d), `positives` is the boolean (N_img x N_txt) matrix the
masking strategy gives, `logit_scale` the model's (exponentiated, clamped) temperature. The arithmetic is torch's
(soft-target cross-entropy, BCE with logits); the wiring is ours because OpenCLIP's ClipLoss and SigLipLoss
hard-code the diagonal as the only positive.

`rows` (OpenCLIP's local_loss): a process computes only its own images' and captions' rows of the global logits,
against every rank's features, and scales its share so that the average over processes (DDP's) of the losses and
of their gradients equals the global loss and its gradient; the logits cost N_local x N instead of N x N.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F
from torch import nn


def gather_with_grad(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Concatenate each tensor over all ranks, rank-major, keeping the gradient path to this rank's part.

    As OpenCLIP's `gather_features(gather_with_grad=True)`: every rank then computes the loss of the global batch,
    and since the gather's backward sums the gradients of every rank's copy, DDP's gradient average equals the
    gradient of the single-process loss on the same samples. Integer tensors (ids) are gathered without gradient.
    Outside DDP the tensors are returned as they are.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensors
    gathered = []
    for tensor in tensors:
        if tensor.is_floating_point():
            gathered.append(torch.cat(dist_nn.all_gather(tensor), dim=0))
        else:
            parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, tensor.contiguous())
            gathered.append(torch.cat(parts, dim=0))
    return tuple(gathered)


@dataclass(frozen=True)
class Rows:
    """The rows of the global logits this process computes: its images', its captions', and how many processes
    share the loss (DDP averages their gradients)."""

    images: slice = field(default_factory=lambda: slice(None))
    texts: slice = field(default_factory=lambda: slice(None))
    world_size: int = 1


ALL_ROWS = Rows()


def local_rows(image_count: int, text_count: int) -> Rows:
    """This rank's rows of features gathered rank-major by `gather_with_grad` (every rank holding as many)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ALL_ROWS
    rank, world_size = dist.get_rank(), dist.get_world_size()
    images = slice(rank * image_count, (rank + 1) * image_count)
    texts = slice(rank * text_count, (rank + 1) * text_count)
    return Rows(images, texts, world_size)


def soft_cross_entropy_sum(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of each row against its positives, the target spread evenly over them (ALBEF); rows
    without a positive are left out."""
    has_positive = positives.any(dim=1)
    targets = positives[has_positive].to(logits.dtype)
    return F.cross_entropy(logits[has_positive], targets / targets.sum(dim=1, keepdim=True), reduction="sum")


class InfoNCE(nn.Module):
    """Symmetric softmax contrastive loss (CLIP): image->text and text->image cross-entropy, averaged.

    With one positive per row this is OpenCLIP's ClipLoss; with several (captions of one image) the targets of a
    row are spread over its positives, as ALBEF does.
    """

    def forward(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        positives: torch.Tensor,
        logit_scale: torch.Tensor,
        rows: Rows = ALL_ROWS,
    ) -> torch.Tensor:
        image_to_text = logit_scale * image_embeds[rows.images] @ text_embeds.T
        text_to_image = logit_scale * text_embeds[rows.texts] @ image_embeds.T
        # Means over every rank's rows that have a positive, so each process divides by the global counts.
        image_loss = soft_cross_entropy_sum(image_to_text, positives[rows.images]) / positives.any(dim=1).sum()
        text_loss = soft_cross_entropy_sum(text_to_image, positives.T[rows.texts]) / positives.any(dim=0).sum()
        return rows.world_size * (image_loss + text_loss) / 2


class SigLIP(nn.Module):
    """Sigmoid loss (SigLIP): every pair is a binary problem, +1 for positives and -1 elsewhere, on
    `scale * cosine + bias` with a learnable bias; summed over pairs and divided by the number of images."""

    def __init__(self, bias_init: float = -10.0) -> None:
        super().__init__()
        self.logit_bias = nn.Parameter(torch.tensor(float(bias_init)))

    def forward(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        positives: torch.Tensor,
        logit_scale: torch.Tensor,
        rows: Rows = ALL_ROWS,
    ) -> torch.Tensor:
        logits = logit_scale * image_embeds[rows.images] @ text_embeds.T + self.logit_bias
        # BCE on {0, 1} targets is SigLIP's -logsigmoid(label * logit) with labels in {-1, +1}.
        targets = positives[rows.images].to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
        return rows.world_size * loss / image_embeds.shape[0]
