"""The contrastive LightningModule: dual encoder, masking, loss, retrieval metrics, health and pictures wired."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from vigil.core.errors import ConfigError
from vigil.core.guardrails import check_finite_loss
from vigil.core.module import TaskModule
from vigil.core.pictures import publish_figure
from vigil.tasks.contrastive.data import ContrastiveBatch
from vigil.tasks.contrastive.health import collapse_alerts, health_stats
from vigil.tasks.contrastive.losses import gather_with_grad
from vigil.tasks.contrastive.metrics import RetrievalRecall
from vigil.tasks.contrastive.model import DualEncoder, DualEncoderOutput
from vigil.tasks.contrastive.pictures import retrieval_grid


class ContrastiveModule(TaskModule):
    """Trains a dual encoder on the positives its masking strategy gives, over the batch of every rank."""

    task_name = "contrastive"

    def __init__(
        self,
        model: DualEncoder,
        loss: nn.Module,
        masking: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        ks: Sequence[int] = (1, 5, 10),
        chunk_size: int = 1024,
        pictures: int = 4,
        top_k: int = 5,
    ) -> None:
        super().__init__(model, loss, masking, optimizer, scheduler)
        self.pictures = pictures
        self.top_k = top_k
        self.metrics = nn.ModuleDict({split: RetrievalRecall(ks, chunk_size) for split in ("val", "test")})
        self.picture_queries: tuple[list[str], torch.Tensor, torch.Tensor] | None = None

    def setup(self, stage: str) -> None:
        """Refuse a tokenizer with more tokens than the text tower has embeddings (an index error mid-run)."""
        tokenizer = getattr(self.trainer.datamodule, "tokenizer", None)
        rows = self.model.text_encoder.get_input_embeddings().num_embeddings
        if tokenizer is not None and len(tokenizer) > rows:
            raise ConfigError(
                f"the tokenizer has {len(tokenizer)} tokens, the text tower embeds {rows}: "
                "give data.tokenizer and model.text_model the same checkpoint, or raise model.vocab_size"
            )

    def forward_batch(self, batch: ContrastiveBatch) -> DualEncoderOutput:
        """The model on the batch's input fields, by name."""
        return self.model(image=batch.image, input_ids=batch.input_ids, attention_mask=batch.attention_mask)

    def training_step(self, batch: ContrastiveBatch, batch_idx: int) -> dict[str, torch.Tensor]:
        output = self.forward_batch(batch)
        image_embeds, text_embeds, image_ids, caption_ids = gather_with_grad(
            output.image_embeds, output.text_embeds, batch.img_id, batch.caption_img_id
        )
        loss = self.loss(image_embeds, text_embeds, self.masking(image_ids, caption_ids), output.logit_scale)
        check_finite_loss(loss.detach(), self.global_step, self.current_epoch)
        # The loss is that of the global batch, the same on every rank: no sync needed.
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch))
        return {
            "loss": loss,
            "image_embeds": output.image_embeds.detach(),
            "text_embeds": output.text_embeds.detach(),
            "logit_scale": output.logit_scale.detach(),
        }

    def validation_step(self, batch: ContrastiveBatch, batch_idx: int) -> None:
        output = self._evaluate(batch, "val")
        if batch_idx == 0 and self.picture_queries is None:
            # The first caption of each of the first images: different scenes, not five views of one.
            first = torch.ones_like(batch.caption_img_id, dtype=torch.bool)
            first[1:] = batch.caption_img_id[1:] != batch.caption_img_id[:-1]
            chosen = first.nonzero().flatten()[: self.pictures]
            captions = [batch.caption[i] for i in chosen.tolist()]
            self.picture_queries = (captions, batch.caption_img_id[chosen], output.text_embeds[chosen])

    def test_step(self, batch: ContrastiveBatch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: ContrastiveBatch, split: str) -> DualEncoderOutput:
        output = self.forward_batch(batch)
        self.metrics[split].update(output.image_embeds, batch.img_id, output.text_embeds, batch.caption_img_id)
        return output

    def on_validation_epoch_end(self) -> None:
        metric = self.metrics["val"]
        self._log_metrics("val")
        # Every rank takes part in the sync that gathers all image embeddings; only rank zero draws.
        if self.pictures and not self.trainer.sanity_checking:
            with metric.sync_context():
                if self.trainer.is_global_zero and self.picture_queries is not None:
                    self._draw_pictures(metric)
        metric.reset()
        self.picture_queries = None

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")
        self.metrics["test"].reset()

    def _log_metrics(self, split: str) -> None:
        values = self.metrics[split].compute()
        # Already synced by torchmetrics; sync_dist only averages identical values (and quiets Lightning).
        self.log_dict({f"{split}/{name}": value for name, value in values.items()}, sync_dist=True)

    def _draw_pictures(self, metric: RetrievalRecall) -> None:
        images, image_ids, _, _ = metric.embeddings()
        captions, caption_ids, text_embeds = self.picture_queries
        top = (text_embeds @ images.T).topk(min(self.top_k, images.shape[0]), dim=1).indices
        retrieved_ids = image_ids[top]
        datamodule = self.trainer.datamodule
        retrieved = [[datamodule.image_for_id("val", int(i)) for i in row] for row in retrieved_ids]
        correct = (retrieved_ids == caption_ids[:, None]).tolist()
        publish_figure(self.trainer, retrieval_grid(captions, retrieved, correct), "val_retrieval")

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
        return collapse_alerts(stats, self.model.embed_dim, **thresholds)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """No weight decay on gains, biases and the temperature (as OpenCLIP); decay on the weight matrices."""
        parameters = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in parameters if p.ndim >= 2]},
            {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0},
        ]
