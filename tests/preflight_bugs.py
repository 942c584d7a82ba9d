"""One-line bugs the preflight must catch, injected into a built run (module and data) for the tests and the study.

Each bug is what a researcher writes by accident: a detached tower, a transpose that mixes the batch, an output
layer initialised far from uninformed, images that reach the model blank, test images copied into train, masks
shifted against their images. The submodules they hook are named per task (`PLACES`).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vigil.core.data import TaskDataModule
from vigil.core.module import TaskModule

# Per task: the tower whose output is detached, the image-path layer whose output mixes the batch, the output
# scaled at initialisation (contrastive: the dual encoder's embeddings, as if they were never normalised).
PLACES = {
    "segmentation": {
        "detach": "model.network.encoder",
        "mix": "model.network.encoder.conv1",
        "scale": "model.network.segmentation_head",
    },
    "contrastive": {"detach": "model.text_encoder", "mix": "model.image_projection", "scale": "model"},
    "cape": {"detach": "model.encoder", "mix": "model.encoder.backbone.conv1", "scale": "model.head"},
    "vqa": {
        "detach": "model.model.model.vision_tower",
        "mix": "model.model.model.multi_modal_projector",
        "scale": "model.model.lm_head",
    },
}


def detach_tower(module: TaskModule, task: str) -> None:
    """The tower's output leaves the graph: none of its parameters is trained."""
    hook(module, PLACES[task]["detach"], lambda output: map_tensors(output, torch.Tensor.detach))


def mix_batch(module: TaskModule, task: str) -> None:
    """`x.transpose(0, 1).reshape(x.shape)`: the classic reshape that scrambles samples across the batch."""
    hook(module, PLACES[task]["mix"], lambda output: map_tensors(output, scrambled))


def scale_initial_output(module: TaskModule, task: str) -> None:
    """Outputs 30x too large at initialisation (logits of an output layer, or unnormalised embeddings)."""
    hook(module, PLACES[task]["scale"], lambda output: map_tensors(output, lambda tensor: tensor * 30))


def blank_images(datamodule: TaskDataModule, task: str) -> None:
    """Every image input reaches the model as zeros (a normalisation applied twice, a wrong channel order...)."""
    change_batches(
        datamodule,
        lambda batch: dataclasses.replace(
            batch, **{name: torch.zeros_like(getattr(batch, name)) for name in batch.image_fields}
        ),
    )


def shift_masks(datamodule: TaskDataModule, task: str) -> None:
    """Masks shifted by a quarter of the image against their images (segmentation only)."""
    change_batches(
        datamodule, lambda batch: dataclasses.replace(batch, mask=batch.mask.roll(batch.mask.shape[-1] // 4, dims=-1))
    )


def copy_test_images_into_train(datamodule: TaskDataModule, task: str, count: int = 4) -> None:
    """The first `count` test images written over training images: the same picture in both splits."""
    train, test = datamodule.image_files("train"), datamodule.image_files("test")
    for source, target in zip(sorted(set(test))[:count], sorted(set(train))[:count], strict=True):
        shutil.copyfile(source, target)


MODULE_BUGS: dict[str, Callable[[TaskModule, str], None]] = {
    "detach_tower": detach_tower,
    "mix_batch": mix_batch,
    "scale_initial_output": scale_initial_output,
}
DATA_BUGS: dict[str, Callable[[TaskDataModule, str], None]] = {
    "blank_images": blank_images,
    "shift_masks": shift_masks,
    "copy_test_images_into_train": copy_test_images_into_train,
}


def hook(module: TaskModule, name: str, change: Callable[[Any], Any]) -> None:
    """Replace the output of submodule `name` by `change(output)` on every forward."""
    layer: nn.Module = module.get_submodule(name)
    layer.register_forward_hook(lambda _layer, _inputs, output: change(output))


def map_tensors(value: Any, function: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`function` applied to every tensor in a tensor, a list or tuple of them, a dataclass or a transformers
    ModelOutput."""
    if isinstance(value, torch.Tensor):
        return function(value)
    if isinstance(value, list | tuple):
        return type(value)(map_tensors(item, function) for item in value)
    if isinstance(value, dict):
        for key in list(value.keys()):
            value[key] = map_tensors(value[key], function)
        return value
    # After the dict case: a transformers ModelOutput is both, and is changed in place.
    if dataclasses.is_dataclass(value):
        fields = dataclasses.fields(value)
        return dataclasses.replace(value, **{f.name: map_tensors(getattr(value, f.name), function) for f in fields})
    return value


def scrambled(tensor: torch.Tensor) -> torch.Tensor:
    """Batch and the next dimension swapped, then read back in the original shape."""
    return tensor.transpose(0, 1).reshape(tensor.shape)


def change_batches(datamodule: TaskDataModule, change: Callable[[Any], Any]) -> None:
    """Every batch of every loader passes through `change` after collation."""
    collate = datamodule.collate

    def changed(split: str) -> Callable[[list[Any]], Any]:
        original = collate(split)
        return lambda samples: change(original(samples))

    datamodule.collate = changed  # type: ignore[method-assign]
