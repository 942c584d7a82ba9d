"""The pretrained joint model (model=clip) in process: tiny CLIP and SigLIP checkpoints loaded through the hub-id
calls, their bias and padding rules, tower locking, gradient checkpointing, and preprocessing from the model."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import pytest
import timm
import torch
from timm.data import resolve_model_data_config
from transformers import AutoTokenizer, CLIPImageProcessor

from vigil.core.batch import check_forward_accepts
from vigil.core.errors import ConfigError
from vigil.tasks.contrastive.losses import InfoNCE, SigLIP
from vigil.tasks.contrastive.masking import SameImageMasking
from vigil.tasks.contrastive.module import ContrastiveModule
from vigil.tasks.contrastive.preprocessing import processor_preprocessing, timm_preprocessing
from vigil.tasks.contrastive.pretrained import pretrained_dual_encoder
from vigil.tasks.contrastive.records import ContrastiveBatch, ContrastiveContext

LAYERS = 3


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny_checkpoints")


def tiny(cache: Path, family: str = "clip", **options):
    return pretrained_dual_encoder("tiny", str(cache), {"family": family, "layers": LAYERS}, **options)


def module(model, loss) -> ContrastiveModule:
    return ContrastiveModule(model, loss, SameImageMasking(), partial(torch.optim.AdamW, lr=1e-3))


def test_the_checkpoint_model_takes_the_batch_inputs(cache: Path):
    check_forward_accepts(tiny(cache), ContrastiveBatch)


def test_siglip_checkpoint_bias_is_the_sigmoid_loss_bias(cache: Path):
    model = tiny(cache, "siglip")
    wired = module(model, SigLIP())
    assert wired.loss.logit_bias is model.model.logit_bias
    assert float(wired.loss.logit_bias.detach()) == -10.0
    assert {id(p) for p in wired.parameters()} >= {id(model.model.logit_bias)}


def test_siglip_bias_is_frozen_under_a_loss_without_one(cache: Path):
    model = tiny(cache, "siglip")
    module(model, InfoNCE())
    assert not model.model.logit_bias.requires_grad


def test_siglip_refuses_captions_not_padded_to_its_length(cache: Path):
    model = tiny(cache, "siglip")
    tokenizer = AutoTokenizer.from_pretrained(next(cache.glob("tiny_siglip-*")))
    wired = module(model, SigLIP())
    with pytest.raises(ConfigError, match=re.escape("set data.padding=max_length data.max_length=32")):
        wired.use_context(ContrastiveContext(tokenizer, {}, "longest", 32))
    wired.use_context(ContrastiveContext(tokenizer, {}, "max_length", 32))


@pytest.mark.parametrize("unlocked", [0, 1, 2])
def test_locked_image_tower_trains_only_its_last_groups(cache: Path, unlocked: int):
    model = tiny(cache, lock_image={"unlocked_groups": unlocked})
    trainable = {name for name, p in model.model.named_parameters() if p.requires_grad}
    image = {name for name, _ in model.model.named_parameters() if name.startswith(("vision_model", "visual_proj"))}
    head = {n for n in image if n.startswith(("vision_model.post_layernorm", "visual_projection"))}
    last_blocks = {
        n
        for n in image
        for i in range(LAYERS - unlocked + 1, LAYERS)
        if n.startswith(f"vision_model.encoder.layers.{i}.")
    }
    expected_image = (head if unlocked >= 1 else set()) | last_blocks
    assert trainable & image == expected_image
    assert all(p.requires_grad for n, p in model.model.named_parameters() if n.startswith("text_model"))


def test_gradient_checkpointing_gives_the_same_gradients(cache: Path):
    batch = ContrastiveBatch(
        image=torch.randn(2, 3, 64, 64),
        input_ids=torch.tensor([[0, 5, 6, 1], [0, 7, 1, 1]]),
        attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
        img_id=torch.tensor([0, 1]),
        caption_img_id=torch.tensor([0, 1]),
        filename=["a", "b"],
        caption=["a", "b"],
    )
    gradients = []
    for checkpointing in (False, True):
        model = tiny(cache, gradient_checkpointing=checkpointing)
        assert model.model.is_activation_checkpointing == checkpointing
        output = model(**batch.model_inputs())
        InfoNCE()(
            output.image_embeds, output.text_embeds, torch.eye(2, dtype=torch.bool), output.logit_scale
        ).backward()
        gradients.append(model.model.vision_model.encoder.layers[0].mlp.fc1.weight.grad)
    torch.testing.assert_close(gradients[0], gradients[1])


def test_timm_tower_preprocessing_is_the_models_data_config():
    name = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    reference = resolve_model_data_config(timm.create_model(name, pretrained=False))
    preprocessing = timm_preprocessing(name, None)
    assert preprocessing.mean == reference["mean"] == (0.5, 0.5, 0.5)
    assert preprocessing.std == reference["std"]
    assert preprocessing.interpolation == reference["interpolation"]
    assert preprocessing.size == reference["input_size"][1:]
    assert timm_preprocessing(name, 64).size == (64, 64)


def test_checkpoint_preprocessing_is_its_image_processors():
    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    preprocessing = processor_preprocessing(processor, None, "clip")
    assert preprocessing.size == (224, 224)
    assert preprocessing.mean == tuple(processor.image_mean) and preprocessing.std == tuple(processor.image_std)
    assert preprocessing.interpolation == "bicubic"
    with pytest.raises(ConfigError, match=re.escape("data.image_size=64, but clip takes 224x224 images")):
        processor_preprocessing(processor, 64, "clip")
