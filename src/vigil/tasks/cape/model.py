"""The CAPE network: a timm backbone shared by support and query, support keypoint features, and a head.

1. Support and query images go through one timm backbone (`features_only`) and a small feature pyramid (the
   deeper map upsampled and added to the finer ones) to a D-channel map at the finest chosen stride.
2. Each support keypoint's feature is sampled bilinearly at its coordinates (`grid_sample`) and averaged over the
   shots where it is labelled (a keypoint labelled in no shot gets a zero feature, which matches nothing).
3. Head `heatmap`: cosine similarity of each keypoint feature with every query location, a learned scale, softmax
   over locations, and the soft-argmax (expected location) as the coordinates (as POMNet matches support keypoints
   against the query). Head `transformer`: the keypoint features, with a sine encoding of that first estimate,
   attend to the query map through a transformer decoder and regress an offset that refines it (CapeFormer's idea).
Coordinates are normalised to the query crop: (x, y) in [0, 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import timm
import torch
import torch.nn.functional as F
from torch import nn

from vigil.core.errors import ConfigError

HeadName = Literal["heatmap", "transformer"]


@dataclass
class CapeOutput:
    """Predicted keypoints (B x K x 2), the similarity heatmap logits (B x K x h x w), and the heatmap's own
    soft-argmax estimate before any refinement (B x K x 2)."""

    keypoints: torch.Tensor
    heatmaps: torch.Tensor
    initial_keypoints: torch.Tensor


class FeatureEncoder(nn.Module):
    """A timm `features_only` backbone fused into one D-channel map at its finest level (FPN-style)."""

    def __init__(self, backbone: nn.Module, dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.lateral = nn.ModuleList(nn.Conv2d(channels, dim, 1) for channels in backbone.feature_info.channels())
        self.smooth = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W images to N x D maps at the finest chosen stride."""
        maps = self.backbone(images)
        fused = self.lateral[-1](maps[-1])
        for lateral, finer in zip(reversed(self.lateral[:-1]), reversed(maps[:-1]), strict=True):
            fused = F.interpolate(fused, size=finer.shape[-2:], mode="bilinear", align_corners=False) + lateral(finer)
        return self.smooth(fused)


class HeatmapHead(nn.Module):
    """Cosine-similarity heatmaps with a learned scale, and their soft-argmax (`keypoint_mask` is taken for the
    heads' common call and not needed: padding keypoints have zero features and are never counted)."""

    def __init__(self, scale_init: float = 10.0) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale_init)))

    def forward(
        self, keypoint_features: torch.Tensor, query_features: torch.Tensor, keypoint_mask: torch.Tensor
    ) -> CapeOutput:
        """Heatmaps of the keypoint features (B x K x D) over the query map (B x D x h x w), and their soft-argmax."""
        logits = self.log_scale.exp() * torch.einsum(
            "bkd,bdhw->bkhw", F.normalize(keypoint_features, dim=-1), F.normalize(query_features, dim=1)
        )
        keypoints = soft_argmax(logits)
        return CapeOutput(keypoints=keypoints, heatmaps=logits, initial_keypoints=keypoints)


class TransformerHead(nn.Module):
    """The heatmap estimate refined by a transformer decoder: keypoint queries attend to the query feature map."""

    def __init__(self, dim: int, layers: int = 2, heads: int = 4, scale_init: float = 10.0) -> None:
        super().__init__()
        if dim % 4:
            raise ConfigError(f"model.dim={dim} must be a multiple of 4 for the 2-D sine position encoding")
        self.matcher = HeatmapHead(scale_init)
        layer = nn.TransformerDecoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers)
        self.offset = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 2))
        # Zero offsets at the start: the head begins as the heatmap head and learns only the correction.
        nn.init.zeros_(self.offset[-1].weight)
        nn.init.zeros_(self.offset[-1].bias)

    def forward(
        self, keypoint_features: torch.Tensor, query_features: torch.Tensor, keypoint_mask: torch.Tensor
    ) -> CapeOutput:
        """The heatmap head's estimate plus the decoder's offset; padding keypoints are masked in attention."""
        first = self.matcher(keypoint_features, query_features, keypoint_mask)
        dim, height, width = query_features.shape[1:]
        memory = query_features.flatten(2).transpose(1, 2) + sine_encoding(cell_centres(height, width), dim)
        tokens = keypoint_features + sine_encoding(first.keypoints, dim)
        hidden = self.decoder(tokens, memory, tgt_key_padding_mask=~keypoint_mask)
        return CapeOutput(
            keypoints=first.keypoints + self.offset(hidden),
            heatmaps=first.heatmaps,
            initial_keypoints=first.keypoints,
        )


class CapeModel(nn.Module):
    """Shared encoder, support keypoint features averaged over shots, and a head that places them in the query."""

    def __init__(self, encoder: FeatureEncoder, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(
        self,
        support_images: torch.Tensor,
        support_keypoints: torch.Tensor,
        support_weights: torch.Tensor,
        query_images: torch.Tensor,
        keypoint_mask: torch.Tensor,
    ) -> CapeOutput:
        """Query keypoints (B x K x 2, crop-normalised) from the support shots' keypoints and features."""
        batch, shots = support_images.shape[:2]
        # One pass for supports and queries: BatchNorm sees them as one batch, as in a single-image model.
        features = self.encoder(torch.cat([support_images.flatten(0, 1), query_images]))
        support_features = features[: batch * shots].unflatten(0, (batch, shots))
        keypoint_features = support_keypoint_features(support_features, support_keypoints, support_weights)
        return self.head(keypoint_features, features[batch * shots :], keypoint_mask)


def support_keypoint_features(features: torch.Tensor, keypoints: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """B x K x D: features (B x S x D x h x w) sampled at the keypoints (B x S x K x 2), weighted mean over shots."""
    batch, shots = features.shape[:2]
    grid = (2 * keypoints - 1).flatten(0, 1).unsqueeze(2)
    sampled = F.grid_sample(features.flatten(0, 1), grid, mode="bilinear", align_corners=False)
    sampled = sampled.squeeze(-1).transpose(1, 2).unflatten(0, (batch, shots))
    total = weights.sum(dim=1).unsqueeze(-1)
    return (sampled * weights.unsqueeze(-1)).sum(dim=1) / total.clamp_min(1e-6)


def cell_centres(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """(h*w) x 2 normalised (x, y) centres of the cells of an h x w map, row-major."""
    ys = (torch.arange(height, device=device) + 0.5) / height
    xs = (torch.arange(width, device=device) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.flatten(), grid_y.flatten()], dim=-1)


def soft_argmax(logits: torch.Tensor) -> torch.Tensor:
    """B x K x 2: the expected (x, y) cell centre under the softmax of each B x K x h x w logit map."""
    height, width = logits.shape[-2:]
    probabilities = logits.flatten(2).softmax(dim=-1)
    return probabilities @ cell_centres(height, width, logits.device).to(probabilities.dtype)


def sine_encoding(points: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """`dim`-wide sine/cosine encoding of normalised (x, y) points (... x 2), as DETR encodes positions: for each
    coordinate, dim / 4 frequencies from 2 pi down to 2 pi / temperature."""
    steps = torch.arange(dim // 4, device=points.device, dtype=points.dtype) / (dim // 4)
    frequencies = 2 * math.pi / temperature**steps
    angles = points.unsqueeze(-1) * frequencies
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


def cape_model(
    backbone: str = "resnet18",
    pretrained: bool = False,
    pretrained_path: str | None = None,
    feature_indices: tuple[int, ...] = (1, 2),
    dim: int = 128,
    head: HeadName = "heatmap",
    decoder_layers: int = 2,
    decoder_heads: int = 4,
    scale_init: float = 10.0,
    backbone_kwargs: dict[str, Any] | None = None,
) -> CapeModel:
    """Build the CAPE model around a timm backbone.

    `pretrained` downloads the backbone's weights on first use; `pretrained_path` loads them from a local file
    (safetensors or a torch state dict of the same timm model, classifier optional), offline.
    """
    if head not in ("heatmap", "transformer"):
        raise ConfigError(f"model.head={head} is not a head; valid: heatmap, transformer")
    arguments = dict(backbone_kwargs or {})
    if pretrained_path:
        arguments["pretrained_cfg_overlay"] = {"file": str(pretrained_path)}
    network = timm.create_model(
        backbone,
        pretrained=pretrained or bool(pretrained_path),
        features_only=True,
        out_indices=tuple(feature_indices),
        **arguments,
    )
    encoder = FeatureEncoder(network, dim)
    if head == "heatmap":
        return CapeModel(encoder, HeatmapHead(scale_init))
    return CapeModel(encoder, TransformerHead(dim, decoder_layers, decoder_heads, scale_init))
