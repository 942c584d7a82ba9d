"""The embedded Qwen2-VL-style checkpoint: `Qwen2VLForConditionalGeneration` with random weights and ChatML.

`model.name_or_path=tiny_qwen2_vl` (conf/model/tiny_qwen2_vl.yaml) writes it once under the cache and loads it
back with `AutoProcessor` / `AutoModelForImageTextToText`, like a hub checkpoint. It has what the instruct models
of the family have: a `Qwen2VLProcessor` (dynamic-resolution image processor, merged patches, 3-D rotary
positions), a byte-level BPE tokenizer with Qwen2's special tokens, trained on the ChatML rendering of the
synthetic texts, and Qwen2-VL-Instruct's own chat template.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
)
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

from vigil.core.synthetic import ensure_synthetic
from vigil.core.tiny import byte_level_bpe_tokenizer
from vigil.tasks.vqa.prompts import SYSTEM_PROMPT, Turn, question_text
from vigil.tasks.vqa.question_types import QUESTION_TYPES
from vigil.tasks.vqa.synthetic import text_corpus

TINY_QWEN2_VL = "tiny_qwen2_vl"
END_OF_TURN = "<|im_end|>"
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    END_OF_TURN,
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen2-VL-Instruct's chat template (its chat_template.json), verbatim.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinyQwen2VL:
    """Sizes of the embedded Qwen2-VL model: a ViT vision tower and a Qwen2 language model.

    An image of `image_size`² pixels becomes (image_size / patch_size)² patches, merged 2 x 2 into a quarter as
    many image tokens (64 px, patch 8: 16 tokens, as the tiny LLaVA has).
    """

    vocab_size: int = 1024
    image_size: int = 64
    patch_size: int = 8
    vision_hidden_size: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    max_position_embeddings: int = 1024
    seed: int = 0


@dataclass(frozen=True)
class TinyQwen2VLCheckpoint:
    """What the folder depends on: the sizes and the tokenizer's training texts."""

    sizes: TinyQwen2VL
    corpus_sha1: str


def ensure_tiny_qwen2_vl_checkpoint(cache_dir: Path, sizes: TinyQwen2VL) -> Path:
    """The tiny Qwen2-VL checkpoint folder under `cache_dir`, keyed by its sizes and tokenizer texts; written once."""
    corpus = chat_corpus()
    key = TinyQwen2VLCheckpoint(sizes, hashlib.sha1(json.dumps(corpus).encode()).hexdigest())
    return ensure_synthetic(cache_dir, TINY_QWEN2_VL, key, lambda folder, spec: write_checkpoint(folder, spec, corpus))


def chat_corpus() -> list[str]:
    """The tokenizer's training texts: the ChatML turns of the system prompt, every synthetic question under every
    type, and every answer."""
    header = "<|im_start|>{}\n"
    texts = text_corpus()
    questions = [question_text(Turn(text, "", name), False) for name in QUESTION_TYPES for text in texts]
    return [
        header.format("system") + SYSTEM_PROMPT + END_OF_TURN + "\n",
        header.format("user"),
        header.format("assistant"),
        "Valid answers: ",
        *(question + END_OF_TURN + "\n" for question in questions),
        *(text + END_OF_TURN + "\n" for text in texts),
    ]


def write_checkpoint(folder: Path, spec: TinyQwen2VLCheckpoint, corpus: list[str]) -> None:
    """Train the tokenizer, build the random model and its processor (with the chat template), save them."""
    sizes = spec.sizes
    tokenizer = byte_level_bpe_tokenizer(
        corpus, sizes.vocab_size, SPECIAL_TOKENS, eos_token=END_OF_TURN, pad_token="<|endoftext|>"
    )
    pixels = sizes.image_size**2
    image_processor = Qwen2VLImageProcessor(
        patch_size=sizes.patch_size, min_pixels=pixels // 4, max_pixels=pixels, merge_size=2, temporal_patch_size=2
    )
    video_processor = Qwen2VLVideoProcessor(patch_size=sizes.patch_size, merge_size=2, temporal_patch_size=2)
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )
    with torch.random.fork_rng():
        torch.manual_seed(sizes.seed)
        model = Qwen2VLForConditionalGeneration(tiny_config(sizes, tokenizer))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "vigil_tiny.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")


def tiny_config(sizes: TinyQwen2VL, tokenizer: PreTrainedTokenizerFast) -> Qwen2VLConfig:
    """The Qwen2-VL configuration: a ViT with 2 x 2 patch merging into a Qwen2 language model, M-RoPE."""
    head_dim = sizes.hidden_size // sizes.heads
    # M-RoPE splits each head's rotary half-dimension into temporal, height and width sections.
    spatial = 3 * (head_dim // 2) // 8
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    return Qwen2VLConfig(
        vision_config={
            "depth": sizes.vision_layers,
            "embed_dim": sizes.vision_hidden_size,
            "hidden_size": sizes.hidden_size,
            "num_heads": sizes.vision_heads,
            "mlp_ratio": 4,
            "patch_size": sizes.patch_size,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": sizes.hidden_size,
            "intermediate_size": 4 * sizes.hidden_size,
            "num_hidden_layers": sizes.layers,
            "num_attention_heads": sizes.heads,
            "num_key_value_heads": sizes.heads,
            "max_position_embeddings": sizes.max_position_embeddings,
            "rope_parameters": {
                "rope_type": "default",
                "mrope_section": [head_dim // 2 - 2 * spatial, spatial, spatial],
                "rope_theta": 10000.0,
            },
            # As in Qwen2-VL's own config: no BOS is written, but the id is <|endoftext|>'s.
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids[END_OF_TURN],
            "pad_token_id": ids["<|endoftext|>"],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids[END_OF_TURN],
        pad_token_id=ids["<|endoftext|>"],
    )
