"""The contrastive LightningModule: dual encoder, masking, loss, retrieval metrics, health and pictures wired."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vigil.core.errors import ConfigError
from vigil.core.files import denormalize, open_image
from vigil.core.module import TaskModule, TrainingLoss
from vigil.core.pictures import publish_figure
from vigil.tasks.contrastive.health import health_alerts, health_stats
from vigil.tasks.contrastive.losses import ALL_ROWS, gather_with_grad, local_rows
from vigil.tasks.contrastive.masking import ContrastiveMasking
from vigil.tasks.contrastive.metrics import RetrievalRecall
from vigil.tasks.contrastive.model import DualEncoder
from vigil.tasks.contrastive.pictures import retrieval_grid
from vigil.tasks.contrastive.pretrained import PretrainedDualEncoder
from vigil.tasks.contrastive.records import ContrastiveBatch, ContrastiveContext


@dataclass(frozen=True)
class PictureQueries:
    """Validation captions to draw, with the ids of their images and their text embeddings."""

    captions: list[str]
    image_ids: torch.Tensor
    text_embeds: torch.Tensor


@dataclass(frozen=True)
class Retrieved:
    """What the retrieval picture shows: each query caption, its top image ids, and which of them are correct."""

    captions: list[str]
    image_ids: list[list[int]]
    correct: list[list[bool]]


class ContrastiveModule(TaskModule):
    """Trains a dual encoder on the positives its masking strategy gives, over the batch of every rank.

    `local_loss`: each rank computes only its own rows of the global logits (OpenCLIP's local_loss), with the
    same loss and gradients. A pretrained SigLIP's `logit_bias` is the sigmoid loss's bias; with a loss that has
    none it stays frozen (it would get no gradient).
    """

    task_name = "contrastive"
    # A static method, so that the class attribute is the function itself (its keyword-only thresholds are
    # what config validation checks) and calling it through the instance binds nothing.
    alert_rule = staticmethod(health_alerts)

    def __init__(
        self,
        model: DualEncoder | PretrainedDualEncoder,
        loss: nn.Module,
        masking: ContrastiveMasking,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        ks: Sequence[int] = (1, 5, 10),
        chunk_size: int = 1024,
        pictures: int = 4,
        top_k: int = 5,
        local_loss: bool = False,
    ) -> None:
        super().__init__(model, loss, masking, optimizer, scheduler)
        if model.logit_bias is not None:
            if isinstance(getattr(loss, "logit_bias", None), nn.Parameter):
                loss.logit_bias = model.logit_bias
            else:
                model.logit_bias.requires_grad_(False)
        self.local_loss = local_loss
        self.pictures = pictures
        self.top_k = top_k
        self.metrics = nn.ModuleDict({split: RetrievalRecall(ks, chunk_size) for split in ("val", "test")})
        self.context: ContrastiveContext | None = None
        self.picture_queries: PictureQueries | None = None
        self.retrieved: Retrieved | None = None

    def use_context(self, context: ContrastiveContext) -> None:
        """Keep the data's context; refuse a tokenizer with more tokens than the text tower has embeddings (an
        index error mid-run otherwise), and captions padded otherwise than a last-token text tower was trained."""
        self.context = context
        rows = self.model.text_embedding_rows
        if len(context.tokenizer) > rows:
            raise ConfigError(
                f"the tokenizer has {len(context.tokenizer)} tokens, the text tower embeds {rows}: "
                "give data.tokenizer and model.text_model the same checkpoint, or raise model.vocab_size"
            )
        length = self.model.fixed_text_length
        if length is not None and (context.padding, context.max_length) != ("max_length", length):
            raise ConfigError(
                f"the text tower pools the last of {length} positions, as it was trained; data pads to "
                f"{context.padding} (max_length {context.max_length}): set data.padding=max_length "
                f"data.max_length={length}"
            )

    def training_loss(self, batch: ContrastiveBatch) -> TrainingLoss:
        """The loss of the global batch (features and ids gathered from every rank), with the monitor's inputs."""
        output = self.forward_batch(batch)
        image_embeds, text_embeds, image_ids, caption_ids = gather_with_grad(
            output.image_embeds, output.text_embeds, batch.img_id, batch.caption_img_id
        )
        rows = local_rows(len(output.image_embeds), len(output.text_embeds)) if self.local_loss else ALL_ROWS
        loss = self.loss(image_embeds, text_embeds, self.masking(image_ids, caption_ids), output.logit_scale, rows)
        outputs = {
            "image_embeds": output.image_embeds.detach(),
            "text_embeds": output.text_embeds.detach(),
            "logit_scale": output.logit_scale.detach(),
        }
        return TrainingLoss(loss, outputs)

    def evaluate(self, batch: ContrastiveBatch, split: str, batch_idx: int) -> None:
        """Add the batch's embeddings to the split's retrieval metric; keep the first validation queries to draw."""
        output = self.forward_batch(batch)
        self.metrics[split].update(output.image_embeds, batch.img_id, output.text_embeds, batch.caption_img_id)
        if split == "val" and batch_idx == 0 and self.picture_queries is None:
            self.picture_queries = first_captions(batch, output.text_embeds, self.pictures)

    def log_metrics(self, split: str) -> None:
        """Log recall, RSUM and the number of images and captions scored; for validation, rank the picture
        queries against every rank's images (a collective, so on every rank) before the reset."""
        metric = self.metrics[split]
        self.log_split(split, metric.compute())
        if split == "val":
            self.retrieved = self.retrieve_queries(metric)
            self.picture_queries = None
        metric.reset()

    def retrieve_queries(self, metric: RetrievalRecall) -> Retrieved | None:
        """The top images of the picture queries among all validation images (none in the sanity check)."""
        if not self.pictures or self.trainer.sanity_checking:
            return None
        # Every rank takes part in the sync that gathers all image embeddings, whether it has queries or not.
        with metric.sync_context():
            if self.picture_queries is None:
                return None
            images, image_ids, _, _ = metric.embeddings()
            queries = self.picture_queries
            top = (queries.text_embeds @ images.T).topk(min(self.top_k, images.shape[0]), dim=1).indices
            retrieved_ids = image_ids[top]
            correct = retrieved_ids == queries.image_ids[:, None]
            return Retrieved(queries.captions, retrieved_ids.tolist(), correct.tolist())

    def draw_pictures(self) -> None:
        """The validation captions with their top retrieved images, the correct ones framed in green."""
        if self.retrieved is None:
            return
        images = [[np.asarray(open_image(self.context.val_images[i])) for i in row] for row in self.retrieved.image_ids]
        figure = retrieval_grid(self.retrieved.captions, images, self.retrieved.correct)
        publish_figure(self.trainer, figure, "val_retrieval")

    def preflight_outputs(self, batch: ContrastiveBatch) -> dict[str, torch.Tensor]:
        """The encoders' features, one row per sample (the loss couples samples by design, the features must not)."""
        output = self.forward_batch(batch)
        return {"image_embeds": output.image_embeds, "text_embeds": output.text_embeds}

    @torch.no_grad()
    def chance_loss(self, batch: ContrastiveBatch) -> float:
        """The loss when every image and caption has the same embedding, at the model's temperature: ln(batch)
        for InfoNCE with one positive per caption."""
        output = self.forward_batch(batch)
        same = F.normalize(torch.ones_like(output.image_embeds[:1]), dim=-1)
        image_embeds, text_embeds = same.expand_as(output.image_embeds), same.expand_as(output.text_embeds)
        positives = self.masking(batch.img_id, batch.caption_img_id)
        return float(self.loss(image_embeds, text_embeds, positives, output.logit_scale))

    def preflight_figure(self, batch: ContrastiveBatch) -> plt.Figure:
        """The first captions of the training batch against its first distinct images as the model gets them,
        framed green where the masking makes them the caption's positive."""
        positives = self.masking(batch.img_id, batch.caption_img_id).cpu()
        first = sorted({int(i): index for index, i in reversed(list(enumerate(batch.img_id.tolist())))}.values())
        columns = first[: self.top_k]
        images = [to_picture(batch.image[i]) for i in columns]
        rows = range(min(self.pictures or 4, len(batch)))
        return retrieval_grid(
            [batch.caption[row] for row in rows],
            [images for _ in rows],
            [[bool(positives[column, row]) for column in columns] for row in rows],
        )

    def health_stats(self, outputs: dict[str, torch.Tensor], batch: ContrastiveBatch) -> dict[str, float]:
        """Embedding spread, positive-negative gap, logit scale (and SigLIP's bias) and distinct images."""
        stats = health_stats(
            outputs["image_embeds"], outputs["text_embeds"], batch.img_id, batch.caption_img_id, outputs["logit_scale"]
        )
        if isinstance(getattr(self.loss, "logit_bias", None), torch.Tensor):
            stats["logit_bias"] = float(self.loss.logit_bias.detach())
        return stats

    def health_alerts(self, stats: dict[str, float], thresholds: dict[str, float]) -> dict[str, str]:
        """Embedding collapse and a saturated logit scale, judged with `conf/callbacks/health.yaml`."""
        return self.alert_rule(stats, self.model.embed_dim, **thresholds)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """No weight decay on gains, biases and the temperature (as OpenCLIP); decay on the weight matrices."""
        parameters = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in parameters if p.ndim >= 2]},
            {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0},
        ]


def to_picture(image: torch.Tensor) -> np.ndarray:
    """An ImageNet-normalised 3 x H x W tensor back to H x W x 3 in [0, 1]."""
    return denormalize(image.detach().float().cpu()).permute(1, 2, 0).numpy()


def first_captions(batch: ContrastiveBatch, text_embeds: torch.Tensor, count: int) -> PictureQueries:
    """The first caption of each of the first `count` images: different scenes, not five views of one."""
    first = torch.ones_like(batch.caption_img_id, dtype=torch.bool)
    first[1:] = batch.caption_img_id[1:] != batch.caption_img_id[:-1]
    chosen = first.nonzero().flatten()[:count]
    captions = [batch.caption[i] for i in chosen.tolist()]
    return PictureQueries(captions, batch.caption_img_id[chosen], text_embeds[chosen])
