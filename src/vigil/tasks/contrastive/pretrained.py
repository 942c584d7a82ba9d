"""A pretrained joint image-text model (CLIP, SigLIP and their successors) as the contrastive task's model.

Any checkpoint transformers loads with `AutoModel` as a model with `get_image_features` / `get_text_features`
keeps its own projections, temperature (`logit_scale`) and, for SigLIP, `logit_bias`; the data takes the image
preprocessing and tokenizer from the same checkpoint's processor (`checkpoint_processor`). `name_or_path=tiny` is
the embedded default: a CLIPModel or SiglipModel with random weights and a tokenizer trained on the synthetic
captions, written once as a checkpoint folder under the cache and loaded through exactly the calls a hub id takes.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from tokenizers import processors
from torch import nn
from transformers import (
    AutoModel,
    AutoProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    SiglipProcessor,
)
from transformers.utils import logging as hf_logging

from vigil.core.config import unpacks
from vigil.core.errors import ConfigError
from vigil.core.synthetic import ensure_synthetic
from vigil.core.tiny import byte_level_bpe_tokenizer, with_padding
from vigil.tasks.contrastive.model import LOGIT_SCALE_MAX, DualEncoderOutput
from vigil.tasks.contrastive.synthetic import COLOURS, POSITIONS, SHAPES, SIZES, TEMPLATES
from vigil.tasks.contrastive.towers import Locking, lock_tower

TINY = "tiny"
Family = Literal["clip", "siglip"]
# Text towers that pool the last position (SigLIP): trained on texts padded to their full length, so the data
# must pad the same way for the pooled token to mean what it meant in training.
LAST_TOKEN_POOLING = {"siglip"}
# A tower's top-level modules in CLIP's and SigLIP's joint models: the encoder, then its projection (CLIP's).
IMAGE_TOWER = ("vision_model", "visual_projection")
TEXT_TOWER = ("text_model", "text_projection")


@dataclass(frozen=True)
class TinyClip:
    """Sizes of the embedded checkpoint: a CLIPModel (`family=clip`) or SiglipModel (`family=siglip`)."""

    family: Family = "clip"
    vocab_size: int = 512
    image_size: int = 64
    patch_size: int = 16
    hidden_size: int = 64
    layers: int = 2
    heads: int = 2
    projection_dim: int = 64
    max_length: int = 32
    seed: int = 0


class PretrainedDualEncoder(nn.Module):
    """A joint image-text checkpoint called with the batch's named inputs; returns unit-length embeddings.

    The temperature is the checkpoint's, exponentiated and clamped at 100 as CLIP trains it (or at the
    checkpoint's own value where that is higher, as SigLIP's may be).
    """

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model
        config = model.config
        self.embed_dim = getattr(config, "projection_dim", None) or config.vision_config.hidden_size
        self.logit_scale_max = max(LOGIT_SCALE_MAX, float(model.logit_scale.detach().max()))
        pools_last = config.model_type in LAST_TOKEN_POOLING
        self.fixed_text_length = config.text_config.max_position_embeddings if pools_last else None

    @property
    def logit_bias(self) -> nn.Parameter | None:
        """The checkpoint's sigmoid-loss bias (SigLIP), or None."""
        return getattr(self.model, "logit_bias", None)

    @property
    def text_embedding_rows(self) -> int:
        """How many token ids the text tower embeds."""
        return self.model.config.text_config.vocab_size

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> DualEncoderOutput:
        return DualEncoderOutput(
            image_embeds=self.encode_image(image),
            text_embeds=self.encode_text(input_ids, attention_mask),
            logit_scale=self.model.logit_scale.clamp(0, self.logit_scale_max).exp().reshape(()),
        )

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings of a batch of preprocessed images, from the checkpoint's `get_image_features`."""
        return F.normalize(pooled(self.model.get_image_features(pixel_values=image)), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings of a batch of tokenised captions, from `get_text_features`."""
        features = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return F.normalize(pooled(features), dim=-1)


def pooled(features: torch.Tensor | Any) -> torch.Tensor:
    """The projected features: transformers 5 returns an output whose `pooler_output` holds them, 4.x a tensor."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


@unpacks(tiny=TinyClip, lock_image=Locking, lock_text=Locking)
def pretrained_dual_encoder(
    name_or_path: str = TINY,
    cache_dir: str = ".",
    tiny: dict[str, Any] | None = None,
    lock_image: dict[str, Any] | None = None,
    lock_text: dict[str, Any] | None = None,
    gradient_checkpointing: bool = False,
) -> PretrainedDualEncoder:
    """Load a joint image-text checkpoint (hub name, folder, or `tiny`) with `AutoModel.from_pretrained`.

    - `lock_image` / `lock_text`: `{unlocked_groups: N}` freezes that tower but its last N groups (OpenCLIP's
      lock-image / lock-text: the groups are the embeddings, each transformer block, and the final norm with the
      projection); null trains the whole tower.
    - `gradient_checkpointing`: recompute the blocks' activations in the backward pass (transformers' own).
    """
    path = resolve_checkpoint(name_or_path, Path(cache_dir), tiny)
    # from_pretrained returns a model in eval mode; Lightning keeps the modes it finds, so dropout would stay off.
    model = AutoModel.from_pretrained(path).train()
    if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
        raise ConfigError(
            f"model.name_or_path={name_or_path} loads as {type(model).__name__}, which has no "
            "get_image_features/get_text_features: give a joint image-text checkpoint (CLIP, SigLIP)"
        )
    # FSDP refuses 0-d parameters, and CLIP's temperature is one: kept as a one-element vector instead.
    if model.logit_scale.ndim == 0:
        model.logit_scale = nn.Parameter(model.logit_scale.detach().reshape(1))
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    for locking, prefixes in ((lock_image, IMAGE_TOWER), (lock_text, TEXT_TOWER)):
        if locking is not None:
            lock_tower(tower_parameters(model, prefixes), block_pattern(prefixes[0]), Locking(**locking))
    return PretrainedDualEncoder(model)


def tower_parameters(model: nn.Module, prefixes: tuple[str, ...]) -> list[tuple[str, nn.Parameter]]:
    """One tower's parameters in the model's order: its encoder's, then its projection's."""
    return [(name, p) for name, p in model.named_parameters() if name.split(".")[0] in prefixes]


def block_pattern(encoder: str) -> re.Pattern[str]:
    """The parameter names of the transformer blocks of CLIP's and SigLIP's encoders, with the block index."""
    return re.compile(rf"^{encoder}\.encoder\.layers\.(\d+)\.")


def resolve_checkpoint(name_or_path: str, cache_dir: Path, tiny: dict[str, Any] | None) -> str:
    """What to hand `from_pretrained`: the tiny checkpoint's folder (written on first use), or the name as is."""
    hf_logging.disable_progress_bar()
    if name_or_path != TINY:
        return name_or_path
    return str(ensure_tiny_checkpoint(cache_dir, TinyClip(**(tiny or {}))))


def checkpoint_processor(name_or_path: str, cache_dir: Path, tiny: dict[str, Any] | None) -> Any:
    """The checkpoint's processor (`image_processor` and `tokenizer`), through `AutoProcessor`."""
    processor = AutoProcessor.from_pretrained(resolve_checkpoint(name_or_path, cache_dir, tiny))
    with_padding(processor.tokenizer)
    return processor


def ensure_tiny_checkpoint(cache_dir: Path, sizes: TinyClip) -> Path:
    """The tiny checkpoint folder under `cache_dir`, keyed by its sizes; written once."""
    if sizes.family not in ("clip", "siglip"):
        raise ConfigError(f"model.tiny.family={sizes.family} is not a tiny checkpoint; valid: clip, siglip")
    return ensure_synthetic(cache_dir, f"tiny_{sizes.family}", sizes, write_tiny_checkpoint)


def write_tiny_checkpoint(folder: Path, sizes: TinyClip) -> None:
    """Train the tokenizer, build the random model and its processor, and save them as one checkpoint."""
    builders = {"clip": (clip_tokenizer, clip_parts), "siglip": (siglip_tokenizer, siglip_parts)}
    make_tokenizer, make_parts = builders[sizes.family]
    tokenizer = make_tokenizer(sizes)
    with torch.random.fork_rng():
        torch.manual_seed(sizes.seed)
        model, processor = make_parts(sizes, tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "vigil_tiny.json").write_text(str(asdict(sizes)) + "\n")


def caption_corpus() -> list[str]:
    """The words of the synthetic captions, in every phrase they take, for the tiny tokenizers."""
    words = [
        *COLOURS,
        *(w for names in SHAPES.values() for w in names),
        *(w for names in SIZES.values() for w in names),
    ]
    return [*TEMPLATES, *(p for phrases in POSITIONS.values() for p in phrases), " ".join(words)]


def clip_tokenizer(sizes: TinyClip) -> PreTrainedTokenizerFast:
    """Byte-level BPE as CLIP's: `<|startoftext|> text <|endoftext|>`, padded with `<|endoftext|>`."""
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    tokenizer = byte_level_bpe_tokenizer(
        caption_corpus(), sizes.vocab_size, [bos, eos], bos_token=bos, eos_token=eos, pad_token=eos
    )
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, tokenizer.bos_token_id), (eos, tokenizer.eos_token_id)]
    )
    tokenizer.model_max_length = sizes.max_length
    return tokenizer


def siglip_tokenizer(sizes: TinyClip) -> PreTrainedTokenizerFast:
    """As SigLIP's: `text </s>`, padded with `</s>` to the full length, and no attention mask (none in training)."""
    eos, unk = "</s>", "<unk>"
    tokenizer = byte_level_bpe_tokenizer(
        caption_corpus(),
        sizes.vocab_size,
        [eos, unk],
        eos_token=eos,
        unk_token=unk,
        pad_token=eos,
        model_input_names=["input_ids"],
    )
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", special_tokens=[(eos, tokenizer.eos_token_id)]
    )
    tokenizer.model_max_length = sizes.max_length
    return tokenizer


def tower_sizes(sizes: TinyClip) -> dict[str, int]:
    """The transformer sizes both towers share."""
    return {
        "hidden_size": sizes.hidden_size,
        "intermediate_size": 4 * sizes.hidden_size,
        "num_hidden_layers": sizes.layers,
        "num_attention_heads": sizes.heads,
    }


def clip_parts(sizes: TinyClip, tokenizer: PreTrainedTokenizerFast) -> tuple[CLIPModel, CLIPProcessor]:
    """A random CLIPModel and a CLIPProcessor (shortest edge resized, centre crop, CLIP's statistics)."""
    text = {
        **tower_sizes(sizes),
        "vocab_size": len(tokenizer),
        "max_position_embeddings": sizes.max_length,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {**tower_sizes(sizes), "image_size": sizes.image_size, "patch_size": sizes.patch_size}
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=sizes.projection_dim)
    square = {"height": sizes.image_size, "width": sizes.image_size}
    image_processor = CLIPImageProcessor(size={"shortest_edge": sizes.image_size}, crop_size=square)
    return CLIPModel(config), CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def siglip_parts(sizes: TinyClip, tokenizer: PreTrainedTokenizerFast) -> tuple[SiglipModel, SiglipProcessor]:
    """A random SiglipModel and a SiglipProcessor (resized to a square, statistics 0.5)."""
    text = {
        **tower_sizes(sizes),
        "vocab_size": len(tokenizer),
        "max_position_embeddings": sizes.max_length,
        "bos_token_id": None,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {**tower_sizes(sizes), "image_size": sizes.image_size, "patch_size": sizes.patch_size}
    config = SiglipConfig(text_config=text, vision_config=vision)
    model = SiglipModel(config)
    # SigLIP's initial temperature 10 and bias -10 (transformers initialises both at zero).
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10))
        model.logit_bias.fill_(-10.0)
    image_processor = SiglipImageProcessor(size={"height": sizes.image_size, "width": sizes.image_size})
    return model, SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)
