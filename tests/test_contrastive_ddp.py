"""Across two gloo processes, the gathered loss and its gradient equal the single-process ones on the same samples,
whether every rank computes the global logits or only its own rows of them (local_loss)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from vigil.tasks.contrastive.losses import ALL_ROWS, InfoNCE, SigLIP, gather_with_grad, local_rows
from vigil.tasks.contrastive.masking import DiagonalMasking, SameImageMasking

WORLD = 2
# Image ids chosen so that captions of one image sit on both ranks (0 and 1 hold 3 and 9 each).
IDS = torch.tensor([3, 9, 4, 3, 9, 7, 3, 1])
CASES = {
    "infonce_same_image": (InfoNCE, SameImageMasking),
    "infonce_diagonal": (InfoNCE, DiagonalMasking),
    "siglip_same_image": (SigLIP, SameImageMasking),
}


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(len(IDS), 6, generator=generator), torch.randn(len(IDS), 5, generator=generator)


def encoders() -> tuple[nn.Linear, nn.Linear]:
    torch.manual_seed(1)
    return nn.Linear(6, 4), nn.Linear(5, 4)


def loss_and_gradient(name: str, rows: slice, local: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss on `rows` of the batch (gathered across ranks under DDP; with `local`, this rank's rows of the
    logits only) and the image encoder's weight gradient."""
    loss_class, masking_class = CASES[name]
    image_encoder, text_encoder = encoders()
    images, texts = batch()
    image_embeds = F.normalize(image_encoder(images[rows]), dim=1)
    text_embeds = F.normalize(text_encoder(texts[rows]), dim=1)
    logit_rows = local_rows(len(image_embeds), len(text_embeds)) if local else ALL_ROWS
    image_embeds, text_embeds, image_ids, caption_ids = gather_with_grad(
        image_embeds, text_embeds, IDS[rows], IDS[rows]
    )
    positives = masking_class()(image_ids, caption_ids)
    loss = loss_class()(image_embeds, text_embeds, positives, torch.tensor(10.0), logit_rows)
    loss.backward()
    return loss.detach(), image_encoder.weight.grad


def worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    share = len(IDS) // WORLD
    results = {}
    for name in CASES:
        for local in (False, True):
            loss, gradient = loss_and_gradient(name, slice(rank * share, (rank + 1) * share), local)
            # What DDP does with the parameter gradients, and the logged loss (sync_dist): average over ranks.
            dist.all_reduce(gradient)
            dist.all_reduce(loss)
            results[name, local] = (loss / WORLD, gradient / WORLD)
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_gathered_loss_and_gradient_equal_the_single_process_ones(tmp_path: Path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD)]
    for name in CASES:
        expected_loss, expected_gradient = loss_and_gradient(name, slice(None))
        for rank in ranks:
            for local in (False, True):
                loss, gradient = rank[name, local]
                torch.testing.assert_close(loss, expected_loss, msg=f"{name}, local={local}: loss")
                torch.testing.assert_close(gradient, expected_gradient, msg=f"{name}, local={local}: gradient")
