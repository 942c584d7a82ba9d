"""The CAPE model and module: batch contract, heads, support features, local backbone weights, monitors."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from vigil.core.batch import check_forward_accepts, fields_with_role
from vigil.tasks.cape.health import health_alerts, health_stats
from vigil.tasks.cape.losses import L1HeatmapLoss
from vigil.tasks.cape.masking import VisibleMasking
from vigil.tasks.cape.model import CapeModel, cape_model, sine_encoding, support_keypoint_features
from vigil.tasks.cape.module import CapeModule, support_coordinates, to_original
from vigil.tasks.cape.records import CapeBatch, CapeContext

SMALL = {"backbone": "resnet18", "feature_indices": (1, 2), "dim": 32, "decoder_heads": 2, "decoder_layers": 1}


def tiny_batch(batch: int = 2, shots: int = 2, k: int = 5, size: int = 32) -> CapeBatch:
    generator = torch.Generator().manual_seed(0)
    mask = torch.ones(batch, k, dtype=torch.bool)
    mask[1, -2:] = False
    visibility = torch.full((batch, k), 2)
    visibility[0, 1] = 0
    support_visibility = torch.full((batch, shots, k), 2) * mask[:, None]
    return CapeBatch(
        support_images=torch.randn(batch, shots, 3, size, size, generator=generator),
        support_keypoints=torch.rand(batch, shots, k, 2, generator=generator),
        support_weights=(support_visibility > 0).float(),
        query_images=torch.randn(batch, 3, size, size, generator=generator),
        keypoint_mask=mask,
        query_keypoints=torch.rand(batch, k, 2, generator=generator),
        query_visibility=visibility * mask,
        support_visibility=support_visibility,
        query_annotated_visibility=visibility * mask,
        support_annotated_visibility=support_visibility,
        query_keypoints_original=torch.rand(batch, k, 2, generator=generator) * 100,
        query_bbox=torch.tensor([[0.0, 0.0, 100.0, 80.0]] * batch),
        crop_to_original=torch.tensor([[[125.0, 0.0, -12.5], [0.0, 125.0, -22.5]]] * batch),
        category_id=torch.tensor([3, 4])[:batch],
        category_name=["a", "b"][:batch],
        skeleton=[((0, 1),)] * batch,
        annotation_id=torch.arange(batch),
        support_annotation_ids=[(10, 11)] * batch,
    )


class SpyModel(CapeModel):
    def __init__(self, model: CapeModel):
        super().__init__(model.encoder, model.head)
        self.calls = []

    def forward(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return super().forward(*args, **kwargs)


def test_batch_inputs_match_the_model_forward_and_exclude_query_visibility():
    inputs = fields_with_role(CapeBatch, "input")
    assert inputs == ("support_images", "support_keypoints", "support_weights", "query_images", "keypoint_mask")
    assert "query_visibility" in fields_with_role(CapeBatch, "target")
    check_forward_accepts(cape_model(**SMALL), CapeBatch)


def module_around(model: CapeModel) -> CapeModule:
    return CapeModule(model, L1HeatmapLoss(), VisibleMasking(), partial(torch.optim.AdamW, lr=1e-3))


def test_training_loss_hands_the_model_only_its_input_fields_and_the_monitor_detached_outputs():
    spy = SpyModel(cape_model(**SMALL))
    batch = tiny_batch()
    result = module_around(spy).training_loss(batch)
    ((args, kwargs),) = spy.calls
    assert args == () and set(kwargs) == set(fields_with_role(CapeBatch, "input"))
    assert kwargs["support_images"] is batch.support_images
    assert torch.isfinite(result.loss) and result.loss.requires_grad
    assert set(result.outputs) == {"weight", "keypoints"} and result.outputs["weight"][0, 1] == 0
    assert not any(value.requires_grad for value in result.outputs.values())


def test_evaluation_values_name_categories_from_the_context_and_count_the_queries():
    module = module_around(cape_model(**SMALL)).eval()
    module.use_context(CapeContext({3: "cat face", 4: "chair"}))
    batch = tiny_batch()
    with torch.no_grad():
        module.evaluate(batch, "test", 0)
        module.evaluate(batch, "test", 1)
    values = module.split_values(module.metrics["test"].compute(), module.baselines["test"].compute())
    assert set(values) == {
        "pck", "mpck", "pck_query_mean", "nme", "auc", "epe", "samples", "pck_support_baseline", "pck/cat_face",
        "pck/chair",
    }  # fmt: skip
    assert values["samples"] == 4 and module.picture_rows == [], "pictures come from validation only"
    module.evaluate(batch, "val", 0)
    assert [row.category for row in module.picture_rows] == ["a", "b"]


@pytest.mark.parametrize("head", ["heatmap", "transformer"])
def test_both_heads_predict_keypoints_and_heatmaps_with_gradients_everywhere(head: str):
    model = cape_model(**SMALL, head=head)
    batch = tiny_batch()
    output = model(
        support_images=batch.support_images,
        support_keypoints=batch.support_keypoints,
        support_weights=batch.support_weights,
        query_images=batch.query_images,
        keypoint_mask=batch.keypoint_mask,
    )
    assert output.keypoints.shape == (2, 5, 2) and output.heatmaps.shape == (2, 5, 8, 8)
    assert torch.isfinite(output.keypoints).all()
    weight = VisibleMasking()(batch.query_visibility, batch.support_visibility, batch.keypoint_mask)
    L1HeatmapLoss()(output, batch.query_keypoints, weight).backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []


def test_transformer_head_starts_as_the_heatmap_estimate():
    model = cape_model(**SMALL, head="transformer").eval()
    batch = tiny_batch()
    with torch.no_grad():
        output = model(
            support_images=batch.support_images,
            support_keypoints=batch.support_keypoints,
            support_weights=batch.support_weights,
            query_images=batch.query_images,
            keypoint_mask=batch.keypoint_mask,
        )
    torch.testing.assert_close(output.keypoints, output.initial_keypoints)


def test_support_features_are_sampled_at_the_keypoints_and_averaged_over_labelled_shots():
    features = torch.zeros(1, 2, 1, 4, 4)
    features[0, 0, 0, 1, 2] = 3.0  # shot 0: cell (row 1, column 2)
    features[0, 1, 0, 3, 0] = 5.0  # shot 1: cell (row 3, column 0)
    keypoints = torch.tensor([[[[2.5 / 4, 1.5 / 4], [0.5 / 4, 3.5 / 4]], [[0.5 / 4, 3.5 / 4], [0.5 / 4, 3.5 / 4]]]])
    both = support_keypoint_features(features, keypoints, torch.ones(1, 2, 2))
    torch.testing.assert_close(both, torch.tensor([[[(3.0 + 5.0) / 2], [5.0 / 2]]]))
    only_first = support_keypoint_features(features, keypoints, torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))
    torch.testing.assert_close(only_first, torch.tensor([[[3.0], [0.0]]]))


def test_backbone_loads_local_weights_through_timm(tmp_path):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnet18", pretrained=False)
    save_file(source.state_dict(), str(tmp_path / "resnet18.safetensors"))
    loaded = cape_model(**SMALL, pretrained_path=str(tmp_path / "resnet18.safetensors"))
    torch.testing.assert_close(loaded.encoder.backbone.conv1.weight, source.conv1.weight)
    torch.testing.assert_close(loaded.encoder.backbone.layer2[0].conv1.weight, source.layer2[0].conv1.weight)
    assert not torch.equal(cape_model(**SMALL).encoder.backbone.conv1.weight, source.conv1.weight)


def test_unknown_head_is_a_config_error():
    from vigil.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^model.head=mlp is not a head; valid: heatmap, transformer$"):
        cape_model(**SMALL, head="mlp")


def test_crop_predictions_map_back_to_original_pixels():
    affine = torch.tensor([[[125.0, 0.0, -12.5], [0.0, 125.0, -22.5]]])
    points = torch.tensor([[[0.0, 0.0], [0.5, 0.2]]])
    torch.testing.assert_close(to_original(points, affine), torch.tensor([[[-12.5, -22.5], [50.0, 2.5]]]))


def test_support_baseline_averages_labelled_shots_only():
    keypoints = torch.tensor([[[[0.2, 0.4]], [[0.6, 0.8]], [[0.9, 0.9]]]])
    weights = torch.tensor([[[1.0], [1.0], [0.0]]])
    torch.testing.assert_close(support_coordinates(keypoints, weights), torch.tensor([[[0.4, 0.6]]]))


def test_supervised_keypoint_monitor_alerts_at_zero_only():
    mask = torch.tensor([[True, True, False]])
    keypoints = torch.rand(1, 3, 2)
    stats = health_stats(torch.tensor([[1.0, 0.0, 0.0]]), mask, keypoints)
    assert stats["supervised_kpts"] == 1.0 and stats["supervised_fraction"] == 0.5
    assert health_alerts(stats, min_supervised_kpts=1) == {}
    silent = health_stats(torch.zeros(1, 3), mask, keypoints)
    (name, message), *_ = health_alerts(silent, min_supervised_kpts=1).items()
    assert name == "no_supervised_keypoints" and message.startswith("0 supervised keypoints in the batch")
    assert CapeModule.alert_rule is health_alerts
    assert module_around(cape_model(**SMALL)).health_alerts(silent, {"min_supervised_kpts": 1}).keys() == {name}


def test_position_encoding_keeps_nearby_points_close_and_distant_points_apart():
    def similarity(a: list[float], b: list[float]) -> float:
        encoded = sine_encoding(torch.tensor([a, b]), 64)
        return float(torch.nn.functional.cosine_similarity(encoded[0], encoded[1], dim=0))

    assert similarity([0.5, 0.5], [0.51, 0.5]) > 0.99
    assert similarity([0.1, 0.1], [0.9, 0.9]) < 0.8
    assert sine_encoding(torch.rand(3, 5, 2), 64).shape == (3, 5, 64)
