from dataclasses import dataclass
from functools import partial

import pytest
import segmentation_models_pytorch as smp
import torch
from torch import nn

from vigil.core.batch import Batch, check_forward_accepts, fields_with_role, meta, model_input, target
from vigil.core.errors import ConfigError
from vigil.tasks.segmentation.losses import bce
from vigil.tasks.segmentation.masking import AnnotatedOnlyMasking
from vigil.tasks.segmentation.model import SegmentationModel, smp_model
from vigil.tasks.segmentation.module import SegmentationModule
from vigil.tasks.segmentation.records import SegmentationBatch


def tiny_network():
    return smp.create_model(
        "Unet", encoder_name="resnet18", encoder_weights=None, classes=1, encoder_depth=3, decoder_channels=[32, 16, 8]
    )


class TakesPixels(nn.Module):
    def forward(self, pixels):
        return pixels


class TakesImageAndDepth(nn.Module):
    def forward(self, image, depth):
        return image


class TakesImageAndOptionalDepth(nn.Module):
    def forward(self, image, depth=None):
        return image


class TakesKeywords(nn.Module):
    def forward(self, **inputs):
        return inputs["image"]


def test_fields_with_role_on_segmentation_batch():
    assert fields_with_role(SegmentationBatch, "input") == ("image",)
    assert fields_with_role(SegmentationBatch, "target") == ("mask", "annotated", "full_mask")
    assert fields_with_role(SegmentationBatch, "meta") == ("name",)


def test_fields_with_role_refuses_a_field_without_role():
    @dataclass
    class Unlabelled:
        image: torch.Tensor = model_input()
        extra: int = 0

    with pytest.raises(TypeError, match=r"Unlabelled\.extra has no role"):
        fields_with_role(Unlabelled, "input")


def test_forward_lacking_an_input_field_is_refused():
    with pytest.raises(ConfigError, match=r"does not accept \['image'\]"):
        check_forward_accepts(TakesPixels(), SegmentationBatch)


def test_forward_requiring_an_extra_input_is_refused():
    with pytest.raises(ConfigError, match=r"requires \['depth'\]"):
        check_forward_accepts(TakesImageAndDepth(), SegmentationBatch)


def test_forward_with_an_optional_extra_input_is_accepted():
    check_forward_accepts(TakesImageAndOptionalDepth(), SegmentationBatch)


def test_forward_taking_keywords_is_accepted():
    check_forward_accepts(TakesKeywords(), SegmentationBatch)


def test_batch_with_two_inputs_needs_both_in_forward():
    @dataclass
    class ImageDepthBatch:
        image: torch.Tensor = model_input()
        depth: torch.Tensor = model_input()
        mask: torch.Tensor = target()
        name: list = meta()

    check_forward_accepts(TakesImageAndDepth(), ImageDepthBatch)
    with pytest.raises(ConfigError, match=r"does not accept \['depth'\]"):
        check_forward_accepts(SegmentationModel(nn.Identity()), ImageDepthBatch)


def test_segmentation_model_accepts_segmentation_batch():
    check_forward_accepts(SegmentationModel(nn.Identity()), SegmentationBatch)
    check_forward_accepts(
        smp_model(encoder="resnet18", encoder_depth=3, decoder_channels=[32, 16, 8]), SegmentationBatch
    )


class SpyModel(SegmentationModel):
    def __init__(self, network):
        super().__init__(network)
        self.calls = []

    def forward(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return super().forward(*args, **kwargs)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_training_step_hands_the_model_only_its_input_fields():
    spy = SpyModel(tiny_network())
    module = SegmentationModule(spy, bce(1), AnnotatedOnlyMasking(), partial(torch.optim.SGD, lr=0.1))
    mask = torch.zeros(2, 32, 32, dtype=torch.long)
    mask[0, 8:16, 8:16] = 1
    batch = SegmentationBatch(
        image=torch.randn(2, 3, 32, 32), mask=mask, annotated=torch.tensor([True, False]), name=["a.jpg", "b.jpg"]
    )

    output = module.training_step(batch, 0)

    assert len(spy.calls) == 1
    args, kwargs = spy.calls[0]
    assert args == ()
    assert set(kwargs) == {"image"}
    assert kwargs["image"] is batch.image
    assert torch.isfinite(output["loss"])


@dataclass
class ImageAndDepthBatch(Batch):
    image: torch.Tensor = model_input()
    depth: torch.Tensor = model_input()
    label: torch.Tensor = target()
    name: list[str] = meta()

    def __len__(self) -> int:
        return self.image.shape[0]


def depth_batch() -> ImageAndDepthBatch:
    return ImageAndDepthBatch(torch.zeros(3, 1), torch.ones(3, 1), torch.tensor([0, 1, 2]), ["a", "b", "c"])


def test_model_inputs_are_exactly_the_input_fields():
    batch = depth_batch()
    inputs = batch.model_inputs()
    assert list(inputs) == ["image", "depth"]
    assert inputs["image"] is batch.image and inputs["depth"] is batch.depth


def test_a_model_not_taking_an_input_field_fails_where_it_is_called():
    class TakesImage(nn.Module):
        def forward(self, image):
            return image

    with pytest.raises(TypeError, match="unexpected keyword argument 'depth'"):
        TakesImage()(**depth_batch().model_inputs())


def test_first_cuts_every_field_to_the_first_samples():
    first = depth_batch().first(2)
    assert len(first) == 2
    assert first.label.tolist() == [0, 1] and first.name == ["a", "b"]
