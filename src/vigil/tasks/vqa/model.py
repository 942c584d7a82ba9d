"""The vision-language model: any image-text-to-text checkpoint behind a forward that takes named inputs only.

A checkpoint is a hub name or a folder, loaded with `AutoProcessor` and `AutoModelForImageTextToText` (LLaVA,
Qwen2-VL and the like), optionally with LoRA adapters (peft) and a frozen vision tower. `name_or_path=tiny` is
the embedded default: a LLaVA-style FastVLM model (a small convolutional vision tower from timm through
transformers' TimmWrapper, a small Llama) with random weights and a byte-level BPE tokenizer trained with
`tokenizers` on the template and the synthetic data's texts, written once as a checkpoint folder under the
cache and then loaded through exactly the same two calls as a real checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPImageProcessor,
    FastVlmConfig,
    FastVlmForConditionalGeneration,
    LlamaConfig,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    TimmWrapperConfig,
)
from transformers.utils import logging as hf_logging

from vigil.core.config import ChosenBy, unpacks
from vigil.core.errors import ConfigError
from vigil.core.synthetic import ensure_synthetic
from vigil.core.tiny import byte_level_bpe_tokenizer, with_padding
from vigil.tasks.vqa.prompts import SYSTEM_PROMPT, Turn, answer_text, prompt_text
from vigil.tasks.vqa.quantization import QuantizationName, prepare_for_training, quantization_config
from vigil.tasks.vqa.question_types import QUESTION_TYPES
from vigil.tasks.vqa.synthetic import text_corpus
from vigil.tasks.vqa.tiny_qwen2_vl import TINY_QWEN2_VL, TinyQwen2VL, ensure_tiny_qwen2_vl_checkpoint

TINY = "tiny"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<image>"]
# Parameter names of the vision tower: LLaVA's `vision_tower`, Qwen2-VL's `visual`.
VISION_TOWER = re.compile(r"(^|\.)(vision_tower|visual|vision_model)\.")
# timm's ResNet stem types by name: `plain` is its default (empty) one.
VISION_STEMS = {"deep": "deep", "plain": ""}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class TinyLlava:
    """Sizes of the embedded LLaVA-style model: a convolutional vision tower and a Llama language model.

    The vision tower is a timm ResNet with a `vision_stem` stem and one block per stage, `vision_width` channels
    in the first stage, doubling per stage; `vision_stride` is its output stride, so an image gives
    `(image_size / vision_stride)^2` image tokens.
    """

    vocab_size: int = 1024
    image_size: int = 96
    vision_width: int = 16
    vision_stride: int = 16
    # timm's ResNet stem: `deep` (three 3 x 3 convolutions, `vision_stem_width` channels wide, ending at twice
    # that) or `plain` (one 7 x 7 convolution, 64 channels wide whatever the width).
    vision_stem: str = "deep"
    vision_stem_width: int = 16
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    max_position_embeddings: int = 1024
    seed: int = 0


# The sizes dataclass of each embedded checkpoint, by its `name_or_path`.
TINY_SIZES = {TINY: TinyLlava, TINY_QWEN2_VL: TinyQwen2VL}


@dataclass(frozen=True)
class LoraAdapters:
    """LoRA adapters (peft) on the layers whose names end in `target_modules` (or match it, as one regex)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Sequence[str] | str = ()


@dataclass(frozen=True)
class TinyCheckpoint:
    """What the tiny checkpoint folder depends on: the sizes and the tokenizer's training texts."""

    sizes: TinyLlava
    corpus_sha1: str


class VisionLanguageModel(nn.Module):
    """An image-text-to-text model called with the batch's named inputs; returns next-token logits.

    `image_grid_thw` (Qwen2-VL's patch grid) reaches the model only when the processor made one (see
    `image_arguments`).
    """

    def __init__(self, model: PreTrainedModel, tokenizer: Any) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.Tensor | None = None,
        logits_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of every position (batch x length x vocab), or of the True positions of the boolean `logits_at`
        alone (batch x length), flattened in row order (positions x vocab)."""
        images = self.image_arguments(input_ids, pixel_values, image_grid_thw)
        kept = 0 if logits_at is None else logits_at
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **images, logits_to_keep=kept).logits

    def tail_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.Tensor | None,
        last: int,
    ) -> torch.Tensor:
        """The logits of the last `last` positions only (a vocabulary-sized row per prompt token is not needed)."""
        images = self.image_arguments(input_ids, pixel_values, image_grid_thw)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **images, logits_to_keep=last).logits

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.Tensor | None,
        max_new_tokens: int,
        prefix_allowed_tokens_fn: Callable[[int, torch.Tensor], list[int]] | None = None,
        end_token_id: int | None = None,
    ) -> torch.Tensor:
        """Greedy continuations of left-padded prompts (the new tokens only), optionally constrained, stopping at
        `end_token_id` (default: the end-of-sequence token)."""
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            **self.image_arguments(input_ids, pixel_values, image_grid_thw),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
            eos_token_id=self.tokenizer.eos_token_id if end_token_id is None else end_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        return output[:, input_ids.shape[1] :]

    def image_arguments(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """The image inputs of a model call: pixel values, and for Qwen2-VL-style models the patch grid and the
        modality of each token (1 for an image token, as their processor marks it), which place the image tokens
        in 3-D rotary positions."""
        if image_grid_thw is None:
            return {"pixel_values": pixel_values}
        modality = (input_ids == self.model.config.image_token_id).int()
        return {"pixel_values": pixel_values, "image_grid_thw": image_grid_thw, "mm_token_type_ids": modality}


@unpacks(tiny=ChosenBy("name_or_path", TINY_SIZES), lora=LoraAdapters)
def vision_language_model(
    name_or_path: str = TINY,
    cache_dir: str = ".",
    tiny: dict[str, Any] | None = None,
    lora: dict[str, Any] | None = None,
    freeze_vision_tower: bool = False,
    frozen: Sequence[str] = (),
    dtype: str = "float32",
    gradient_checkpointing: bool = False,
    quantization: QuantizationName | None = None,
    attn_implementation: str | Mapping[str, str] | None = None,
    image_row_separator: str | None = None,
) -> VisionLanguageModel:
    """Load a checkpoint (hub name, folder, or `tiny`) with its tokenizer, then freeze and adapt it.

    - `freeze_vision_tower`: no gradient for the vision encoder's parameters.
    - `frozen`: regexes of further parameter names to freeze (e.g. parameters the forward never uses, which DDP
      would otherwise wait for).
    - `lora`: `{r, alpha, dropout, target_modules}` adds LoRA adapters with peft; then only they train.
    - `dtype`: the weights' dtype (`bfloat16` halves a large model's memory; mixed precision is the trainer's).
    - `gradient_checkpointing`: recompute activations in the backward pass (memory for compute).
    - `quantization`: `4bit` (NF4) or `8bit` base weights through bitsandbytes, for QLoRA (`quantization.py`).
    - `attn_implementation`: transformers' attention kernel (`eager`, `sdpa`, `flash_attention_2`), or one per
      sub-model (`{text_config: eager}`); None: its own choice.
    - `image_row_separator`: the text this model's prompts write after each row of image tokens (the data's
      `image_row_separator` follows it); refused for a model whose positions come from the image grid (M-RoPE).
    """
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype={dtype} is not a dtype; valid: {', '.join(DTYPES)}")
    bits = quantization_config(quantization, has_lora=bool(lora))
    path = resolve_checkpoint(name_or_path, Path(cache_dir), tiny)
    # from_pretrained returns a model in eval mode; Lightning keeps the modes it finds, so dropout would stay off.
    model = AutoModelForImageTextToText.from_pretrained(
        path,
        dtype=DTYPES[dtype],
        quantization_config=bits,
        attn_implementation=dict(attn_implementation)
        if isinstance(attn_implementation, Mapping)
        else attn_implementation,
    ).train()
    if image_row_separator and hasattr(getattr(model, "model", model), "get_rope_index"):
        raise ConfigError(
            f"model.image_row_separator: {name_or_path} takes its image tokens' positions from their grid (M-RoPE), "
            "which text between their rows would break; set model.image_row_separator=null"
        )
    model = prepare_for_training(model, bits is not None, gradient_checkpointing)
    tokenizer = load_processor(name_or_path, Path(cache_dir), tiny).tokenizer
    patterns = [VISION_TOWER] if freeze_vision_tower else []
    patterns += [re.compile(pattern) for pattern in frozen]
    for name, parameter in model.named_parameters():
        if any(pattern.search(name) for pattern in patterns):
            parameter.requires_grad_(False)
    if lora:
        model = with_lora(model, LoraAdapters(**lora))
    return VisionLanguageModel(model, tokenizer)


def with_lora(model: PreTrainedModel, adapters: LoraAdapters) -> nn.Module:
    """The model with LoRA adapters added by peft; only they train."""
    if not adapters.target_modules:
        raise ConfigError("model.lora.target_modules is empty: name the layers to adapt, e.g. [q_proj, v_proj]")
    targets = adapters.target_modules
    config = LoraConfig(
        r=adapters.r,
        lora_alpha=adapters.alpha,
        lora_dropout=adapters.dropout,
        target_modules=targets if isinstance(targets, str) else list(targets),
    )
    return get_peft_model(model, config)


def resolve_checkpoint(name_or_path: str, cache_dir: Path, tiny: dict[str, Any] | None) -> str:
    """What to hand `from_pretrained`: a tiny checkpoint's folder (`tiny`: LLaVA, `tiny_qwen2_vl`: Qwen2-VL; written
    on first use), or the name as is."""
    # No progress bar per load and save: the run logs its own progress.
    hf_logging.disable_progress_bar()
    if name_or_path == TINY:
        return str(ensure_tiny_checkpoint(cache_dir, TinyLlava(**(tiny or {}))))
    if name_or_path == TINY_QWEN2_VL:
        return str(ensure_tiny_qwen2_vl_checkpoint(cache_dir, TinyQwen2VL(**(tiny or {}))))
    return name_or_path


def load_processor(
    name_or_path: str, cache_dir: Path, tiny: dict[str, Any] | None, processor_kwargs: dict[str, Any] | None = None
) -> Any:
    """The checkpoint's processor; a tokenizer without a padding token pads with its end-of-sequence token."""
    path = resolve_checkpoint(name_or_path, Path(cache_dir), tiny)
    processor = AutoProcessor.from_pretrained(path, **(processor_kwargs or {}))
    with_padding(processor.tokenizer)
    return processor


def ensure_tiny_checkpoint(cache_dir: Path, sizes: TinyLlava) -> Path:
    """The tiny checkpoint folder under `cache_dir`, keyed by its sizes and tokenizer texts; written once."""
    corpus = tiny_corpus()
    key = TinyCheckpoint(sizes, hashlib.sha1(json.dumps(corpus).encode()).hexdigest())
    return ensure_synthetic(
        cache_dir, "tiny_llava", key, lambda folder, spec: write_tiny_checkpoint(folder, spec, corpus)
    )


def tiny_corpus() -> list[str]:
    """The texts the tiny tokenizer is trained on: the template around every synthetic question, and the answers."""
    texts = text_corpus()
    prompts = [prompt_text(Turn(text, "", question_type), False) for question_type in QUESTION_TYPES for text in texts]
    return [f"System: {SYSTEM_PROMPT}\nUser: ", "Valid answers: ", *prompts, *(answer_text(t) for t in texts)]


def write_tiny_checkpoint(folder: Path, spec: TinyCheckpoint, corpus: list[str]) -> None:
    """Train the tokenizer, build the random model and its processor, and save them as one checkpoint."""
    sizes = spec.sizes
    tokenizer = byte_level_bpe_tokenizer(
        corpus,
        sizes.vocab_size,
        SPECIAL_TOKENS,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": sizes.image_size}, crop_size={"height": sizes.image_size, "width": sizes.image_size}
    )
    # One image token per cell of the vision tower's output grid (FastVLM's "full" strategy: no CLS token).
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=sizes.vision_stride,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(sizes.seed)
        model = FastVlmForConditionalGeneration(tiny_config(sizes, tokenizer))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "vigil_tiny.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")


def tiny_config(sizes: TinyLlava, tokenizer: PreTrainedTokenizerFast) -> FastVlmConfig:
    """The FastVLM configuration: a timm ResNet vision tower whose last feature map is the image tokens, a Llama.

    Convolutions learn colour, count and position from a few thousand samples; a from-scratch ViT of this size
    learns them far more slowly.
    """
    if sizes.vision_stem not in VISION_STEMS:
        raise ConfigError(f"model.tiny.vision_stem={sizes.vision_stem} is not a stem; valid: {', '.join(VISION_STEMS)}")
    channels = [sizes.vision_width * 2**stage for stage in range(4)]
    vision = TimmWrapperConfig(
        architecture="resnet18",
        hidden_size=channels[-1],
        do_pooling=False,
        model_args={
            "layers": [1, 1, 1, 1],
            "stem_type": VISION_STEMS[sizes.vision_stem],
            "stem_width": sizes.vision_stem_width,
            "channels": channels,
            "output_stride": sizes.vision_stride,
        },
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=sizes.hidden_size,
        intermediate_size=4 * sizes.hidden_size,
        num_hidden_layers=sizes.layers,
        num_attention_heads=sizes.heads,
        num_key_value_heads=sizes.heads,
        max_position_embeddings=sizes.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return FastVlmConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(sizes.image_size // sizes.vision_stride) ** 2,
    )
