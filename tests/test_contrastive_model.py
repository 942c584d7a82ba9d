"""The dual encoder and its LightningModule: batch contract, temperature, optimizer groups, health monitor."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from vigil.core.batch import check_forward_accepts, fields_with_role
from vigil.core.errors import ConfigError
from vigil.tasks.contrastive.health import health_alerts, health_stats
from vigil.tasks.contrastive.losses import InfoNCE
from vigil.tasks.contrastive.masking import SameImageMasking
from vigil.tasks.contrastive.model import DualEncoder, dual_encoder
from vigil.tasks.contrastive.module import ContrastiveModule
from vigil.tasks.contrastive.records import ContrastiveBatch, ContrastiveContext
from vigil.train import CONF_DIR


def tiny_encoder(**overrides) -> DualEncoder:
    arguments = dict(vocab_size=50, text_hidden_size=16, text_layers=1, text_heads=2, embed_dim=8)
    return dual_encoder(**(arguments | overrides))


def tiny_batch(ids: list[int], size: int = 32) -> ContrastiveBatch:
    count = len(ids)
    return ContrastiveBatch(
        image=torch.randn(count, 3, size, size),
        input_ids=torch.randint(5, 50, (count, 6)),
        attention_mask=torch.ones(count, 6, dtype=torch.long),
        img_id=torch.tensor(ids),
        caption_img_id=torch.tensor(ids),
        filename=[f"{i}.jpg" for i in ids],
        caption=[f"caption of {i}" for i in ids],
    )


class SpyEncoder(DualEncoder):
    def __init__(self, encoder: DualEncoder):
        super().__init__(encoder.image_encoder, encoder.text_encoder, encoder.embed_dim)
        self.calls = []

    def forward(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return super().forward(*args, **kwargs)


def test_batch_fields_and_the_model_forward_agree():
    assert fields_with_role(ContrastiveBatch, "input") == ("image", "input_ids", "attention_mask")
    check_forward_accepts(tiny_encoder(), ContrastiveBatch)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_training_step_hands_the_model_only_its_input_fields():
    spy = SpyEncoder(tiny_encoder())
    module = ContrastiveModule(spy, InfoNCE(), SameImageMasking(), partial(torch.optim.AdamW, lr=1e-3))
    batch = tiny_batch([4, 4, 9])
    output = module.training_step(batch, 0)
    ((args, kwargs),) = spy.calls
    assert args == () and set(kwargs) == {"image", "input_ids", "attention_mask"}
    assert kwargs["input_ids"] is batch.input_ids
    assert torch.isfinite(output["loss"]) and output["image_embeds"].shape == (3, 8)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("regnetx_002", {}), ("mobilenetv3_small_100", {}), ("vit_tiny_patch16_224", {"img_size": 32})],
)
def test_any_timm_image_tower_gives_unit_length_embeddings(name, kwargs):
    model = tiny_encoder(image_model=name, image_model_kwargs=kwargs).eval()
    batch = tiny_batch([1, 2])
    with torch.no_grad():
        output = model(image=batch.image, input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    assert output.image_embeds.shape == output.text_embeds.shape == (2, 8)
    torch.testing.assert_close(output.image_embeds.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(output.text_embeds.norm(dim=1), torch.ones(2))


def test_logit_scale_starts_at_clip_init_and_is_clamped_at_100():
    model = tiny_encoder()
    batch = tiny_batch([1, 2])
    output = model(image=batch.image, input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    assert output.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    output = model(image=batch.image, input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    assert output.logit_scale.item() == pytest.approx(100.0, rel=1e-5)


def test_text_tower_drops_the_unused_pooler_so_every_parameter_gets_a_gradient():
    model = tiny_encoder()
    batch = tiny_batch([1, 2, 3])
    output = model(image=batch.image, input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    InfoNCE()(output.image_embeds, output.text_embeds, torch.eye(3, dtype=torch.bool), output.logit_scale).backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []


def test_no_weight_decay_on_biases_gains_and_the_temperature():
    module = ContrastiveModule(
        tiny_encoder(), InfoNCE(), SameImageMasking(), partial(torch.optim.AdamW, weight_decay=0.1)
    )
    decayed, free = module.configure_optimizers().param_groups
    assert decayed["weight_decay"] == 0.1 and free["weight_decay"] == 0.0
    assert any(p is module.model.logit_scale for p in free["params"])
    assert all(p.ndim >= 2 for p in decayed["params"])


def test_health_stats_exclude_same_image_pairs_from_the_negatives():
    embeds = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    ids = torch.tensor([5, 5, 6])
    stats = health_stats(embeds, embeds, ids, ids, torch.tensor(14.3))
    # Same-image pairs (5,5) all have cosine 1; the pairs of different images have cosine 0.
    assert stats["pos_neg_gap"] == pytest.approx(1.0)
    assert stats["unique_ids"] == 2.0 and stats["logit_scale"] == pytest.approx(14.3)


def test_collapse_alert_fires_on_collapsed_embeddings_only():
    dim = 64
    spread = F.normalize(torch.randn(256, dim), dim=1)
    collapsed = F.normalize(torch.ones(256, dim) + 1e-4 * torch.randn(256, dim), dim=1)
    ids = torch.arange(256)
    healthy = health_stats(spread, spread, ids, ids, torch.tensor(14.3))
    assert healthy["img_std"] == pytest.approx(1 / math.sqrt(dim), rel=0.1)
    assert health_alerts(healthy, dim, std_ratio=0.1, max_logit_scale=99.5) == {}
    stats = health_stats(collapsed, spread, ids, ids, torch.tensor(100.0))
    alerts = health_alerts(stats, dim, std_ratio=0.1, max_logit_scale=99.5)
    assert set(alerts) == {"image_collapse", "logit_scale_at_clamp"}
    assert "collapsing to one point" in alerts["image_collapse"]


def test_module_judges_health_with_the_configured_thresholds_and_its_embedding_width():
    config = OmegaConf.load(Path(CONF_DIR) / "callbacks" / "health.yaml")
    thresholds = dict(config.health_monitor.thresholds.contrastive)
    assert ContrastiveModule.alert_rule is health_alerts
    module = ContrastiveModule(tiny_encoder(embed_dim=64), InfoNCE(), SameImageMasking(), torch.optim.AdamW)
    floor = thresholds["std_ratio"] / math.sqrt(64)
    stats = {"img_std": 0.9 * floor, "txt_std": 1.1 * floor, "logit_scale": 14.3}
    assert set(module.health_alerts(stats, thresholds)) == {"image_collapse"}


def test_a_tokenizer_larger_than_the_text_embeddings_is_refused():
    module = ContrastiveModule(tiny_encoder(vocab_size=50), InfoNCE(), SameImageMasking(), torch.optim.AdamW)
    tokenizer = type("Tokenizer", (), {"__len__": lambda self: 51})()
    with pytest.raises(ConfigError, match="the tokenizer has 51 tokens, the text tower embeds 50"):
        module.use_context(ContrastiveContext(tokenizer, {}))


def test_text_tower_loads_a_saved_checkpoint_through_from_pretrained(tmp_path):
    from transformers import BertConfig, BertModel

    saved = BertModel(
        BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    )
    saved.save_pretrained(tmp_path / "text")
    model = dual_encoder(image_model="regnetx_002", text_model=str(tmp_path / "text"), embed_dim=16)
    loaded = model.text_encoder.state_dict()
    for name, value in saved.state_dict().items():
        if not name.startswith("pooler."):
            assert torch.equal(loaded[name], value), name


def test_image_tower_loads_local_pretrained_weights_through_timm(tmp_path):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("regnetx_002", pretrained=False)
    save_file(source.state_dict(), str(tmp_path / "weights.safetensors"))
    model = dual_encoder(
        image_model="regnetx_002",
        pretrained=True,
        image_model_kwargs={"pretrained_cfg_overlay": {"file": str(tmp_path / "weights.safetensors")}},
        embed_dim=16,
    )
    loaded = model.image_encoder.state_dict()
    for name, value in source.state_dict().items():
        if not name.startswith("head.fc."):
            assert torch.equal(loaded[name], value), name
