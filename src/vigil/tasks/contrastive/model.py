"""The dual encoder: a timm image tower and a transformers text tower, projected into one space.

Its forward takes the batch's input fields by name (`image`, `input_ids`, `attention_mask`) and returns
L2-normalised embeddings and the logit scale: a learnable log-temperature initialised at ln(1/0.07) and clamped at
ln(100), as CLIP does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, BertConfig, PreTrainedModel

from vigil.core.errors import ConfigError

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100)
Pooling = Literal["mean", "cls"]


@dataclass
class DualEncoderOutput:
    """Unit-length image (N x d) and text (M x d) embeddings, and the exponentiated, clamped logit scale."""

    image_embeds: torch.Tensor
    text_embeds: torch.Tensor
    logit_scale: torch.Tensor


class DualEncoder(nn.Module):
    """Image and text towers with linear projections to `embed_dim` and a learnable temperature."""

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: PreTrainedModel,
        embed_dim: int = 256,
        text_pooling: Pooling = "mean",
        logit_scale_init: float = LOGIT_SCALE_INIT,
    ) -> None:
        super().__init__()
        if text_pooling not in ("mean", "cls"):
            raise ConfigError(f"model.text_pooling={text_pooling} is not a pooling; valid: mean, cls")
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.embed_dim = embed_dim
        self.text_pooling = text_pooling
        # timm's pooled width: `head_hidden_size` where a head layer follows the pooling (MobileNetV3), else channels.
        image_width = getattr(image_encoder, "head_hidden_size", None) or image_encoder.num_features
        self.image_projection = nn.Linear(image_width, embed_dim, bias=False)
        self.text_projection = nn.Linear(text_encoder.config.hidden_size, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))
        # What the pretrained joint model (pretrained.py) has and this one has not: a SigLIP bias, a text length.
        self.logit_bias: nn.Parameter | None = None
        self.fixed_text_length: int | None = None

    @property
    def text_embedding_rows(self) -> int:
        """How many token ids the text tower embeds."""
        return self.text_encoder.get_input_embeddings().num_embeddings

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> DualEncoderOutput:
        return DualEncoderOutput(
            image_embeds=self.encode_image(image),
            text_embeds=self.encode_text(input_ids, attention_mask),
            logit_scale=self.logit_scale.clamp(0, LOGIT_SCALE_MAX).exp(),
        )

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings of a batch of images."""
        return F.normalize(self.image_projection(self.image_encoder(image)), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings of a batch of tokenised captions: mean over real tokens, or the first token."""
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.text_pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1)
        return F.normalize(self.text_projection(pooled), dim=-1)


def dual_encoder(
    image_model: str = "regnetx_002",
    pretrained: bool = False,
    image_model_kwargs: dict[str, Any] | None = None,
    text_model: str | None = None,
    vocab_size: int = 2000,
    text_hidden_size: int = 128,
    text_layers: int = 2,
    text_heads: int = 2,
    embed_dim: int = 256,
    text_pooling: Pooling = "mean",
    logit_scale_init: float = LOGIT_SCALE_INIT,
    gradient_checkpointing: bool = False,
) -> DualEncoder:
    """Build the dual encoder.

    Image tower: any timm model (`pretrained` downloads its weights on first use), without classifier, pooled.
    Text tower: `text_model`, any transformers checkpoint (hub name or folder, loaded with AutoModel; the data
    loads its tokenizer from the same name), or, when null, a small BERT (`text_layers` x `text_hidden_size`)
    initialised at random for the tokenizer the data trains on its captions (`vocab_size` tokens at most).
    `gradient_checkpointing` recomputes both towers' activations in the backward pass (timm's and transformers').
    """
    image_encoder = timm.create_model(image_model, pretrained=pretrained, num_classes=0, **(image_model_kwargs or {}))
    if text_model is None:
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=text_hidden_size,
            num_hidden_layers=text_layers,
            num_attention_heads=text_heads,
            intermediate_size=4 * text_hidden_size,
        )
        text_encoder = AutoModel.from_config(config)
    else:
        text_encoder = AutoModel.from_pretrained(text_model)
    # The pooled output (BERT's pooler) goes unused: dropping it keeps every parameter in the loss, as DDP requires.
    if getattr(text_encoder, "pooler", None) is not None:
        text_encoder.pooler = None
    if gradient_checkpointing:
        image_encoder.set_grad_checkpointing(True)
        text_encoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return DualEncoder(image_encoder, text_encoder, embed_dim, text_pooling, logit_scale_init)
