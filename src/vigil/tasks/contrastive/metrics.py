"""Retrieval recall over a whole split, as a torchmetrics Metric (embeddings and ids synced across DDP ranks).

Written here because torchmetrics' RetrievalRecall scores one query's own candidate list, while the Flickr30k
protocol ranks every caption against every image and counts an image->text hit for any of the image's captions.
Rules, stated once:
- image->text R@K: an image scores a hit when any of its captions is among the K captions closest to it.
- text->image R@K: a caption scores a hit when its image is among the K images closest to it.
- Ties count against the hit: the rank of the best correct item is the number of wrong items scoring at least as
  high as it. A collapsed model that gives every pair the same score thus gets recall 0, never 100.
- Values are percentages; `rsum` is the sum of the six recalls (at most 600). A query with no correct item in the
  split (an image without captions) is left out.
- `samples` and `captions` count the images and captions scored, over every rank: each is scored exactly once.
Scores are computed in chunks of queries, so memory is `chunk_size x items`, exact and vectorised.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


class RetrievalRecall(Metric):
    """Accumulates image and caption embeddings with their image ids; computes R@K both ways and RSUM."""

    full_state_update = False

    def __init__(self, ks: Sequence[int] = (1, 5, 10), chunk_size: int = 1024) -> None:
        super().__init__()
        self.ks = tuple(ks)
        self.chunk_size = chunk_size
        for name in ("image_embeds", "image_ids", "text_embeds", "caption_ids"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self, image_embeds: torch.Tensor, image_ids: torch.Tensor, text_embeds: torch.Tensor, caption_ids: torch.Tensor
    ) -> None:
        """Add a batch: images (N x d) with their ids (N), captions (M x d) with the ids of their images (M)."""
        self.image_embeds.append(image_embeds.detach().float())
        self.image_ids.append(image_ids)
        self.text_embeds.append(text_embeds.detach().float())
        self.caption_ids.append(caption_ids)

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The accumulated (image_embeds, image_ids, text_embeds, caption_ids)."""
        names = ("image_embeds", "image_ids", "text_embeds", "caption_ids")
        return tuple(dim_zero_cat(getattr(self, name)) for name in names)

    def compute(self) -> dict[str, torch.Tensor]:
        """`r{K}_i2t`, `r{K}_t2i` for each K, `rsum`, and the `samples` (images) and `captions` scored."""
        # Before a DDP sync the states are lists of per-batch tensors; after it, one concatenated tensor.
        if isinstance(self.image_embeds, list) and not self.image_embeds:
            return {}
        images, image_ids, texts, caption_ids = self.embeddings()
        ranks = {
            "i2t": best_correct_ranks(images, image_ids, texts, caption_ids, self.chunk_size),
            "t2i": best_correct_ranks(texts, caption_ids, images, image_ids, self.chunk_size),
        }
        results = {
            f"r{k}_{direction}": (rank < k).float().mean() * 100 for direction, rank in ranks.items() for k in self.ks
        }
        results["rsum"] = sum(results.values())
        results["samples"] = images.new_tensor(images.shape[0])
        results["captions"] = texts.new_tensor(texts.shape[0])
        return results


def best_correct_ranks(
    queries: torch.Tensor, query_ids: torch.Tensor, items: torch.Tensor, item_ids: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """For each query with a correct item: how many wrong items score at least as high as its best correct one."""
    ranks = []
    for start in range(0, queries.shape[0], chunk_size):
        scores = queries[start : start + chunk_size] @ items.T
        correct = query_ids[start : start + chunk_size, None] == item_ids[None, :]
        best = scores.masked_fill(~correct, float("-inf")).amax(dim=1, keepdim=True)
        rank = ((scores >= best) & ~correct).sum(dim=1)
        ranks.append(rank[correct.any(dim=1)])
    return torch.cat(ranks)
