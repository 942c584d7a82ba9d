import pytest
import segmentation_models_pytorch as smp
import torch

from vigil.tasks.segmentation.model import SegmentationModel, smp_model


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    network = smp.create_model(
        "Unet", encoder_name="resnet18", encoder_weights=None, classes=1, encoder_depth=3, decoder_channels=[32, 16, 8]
    )
    network.save_pretrained(tmp_path)
    return network.eval(), tmp_path


def test_pretrained_path_loads_identical_weights(saved):
    network, path = saved
    loaded = smp_model(pretrained_path=str(path), num_classes=1)
    assert isinstance(loaded, SegmentationModel)
    saved_state, loaded_state = network.state_dict(), loaded.network.state_dict()
    assert saved_state.keys() == loaded_state.keys()
    assert all(torch.equal(saved_state[key], loaded_state[key]) for key in saved_state)


def test_pretrained_model_gives_the_same_outputs(saved):
    network, path = saved
    loaded = smp_model(pretrained_path=str(path), num_classes=1).eval()
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(image=image), network(image))


def test_pretrained_path_ignores_fresh_initialisation(saved):
    network, path = saved
    fresh = smp_model(encoder="resnet18", num_classes=1, encoder_depth=3, decoder_channels=[32, 16, 8])
    loaded = smp_model(pretrained_path=str(path), num_classes=1)
    key = "segmentation_head.0.weight"
    assert not torch.equal(fresh.network.state_dict()[key], network.state_dict()[key])
    assert torch.equal(loaded.network.state_dict()[key], network.state_dict()[key])


@pytest.mark.parametrize("num_classes", [2, 3])
def test_pretrained_path_with_mismatched_num_classes_raises(saved, num_classes):
    _, path = saved
    with pytest.raises(ValueError, match=f"predicts 1 classes, data has num_classes={num_classes}"):
        smp_model(pretrained_path=str(path), num_classes=num_classes)


def test_factory_builds_requested_class_count():
    model = smp_model(encoder="resnet18", num_classes=3, encoder_depth=3, decoder_channels=[32, 16, 8]).eval()
    with torch.no_grad():
        assert model(image=torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)
