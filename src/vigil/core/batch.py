"""The batch contract: a batch is a dataclass whose fields are model inputs, targets or metadata.

The module calls the model with the batch's input fields by name (`Batch.model_inputs`); nothing passes a whole
batch to a model. `check_forward_accepts` proves, before training, that the model accepts exactly those fields.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, ClassVar, Literal, Self

from torch import nn

from vigil.core.errors import ConfigError

Role = Literal["input", "target", "meta"]


def model_input(**kwargs: Any) -> Any:
    """A batch field that is handed to the model's forward by name."""
    return dataclasses.field(metadata={"role": "input"}, **kwargs)


def target(**kwargs: Any) -> Any:
    """A batch field used by the loss and the metrics, never by the model."""
    return dataclasses.field(metadata={"role": "target"}, **kwargs)


def meta(**kwargs: Any) -> Any:
    """A batch field for bookkeeping (names, ids, sizes): never reaches the model or the loss."""
    return dataclasses.field(metadata={"role": "meta"}, **kwargs)


class Batch:
    """Base of the task batches: a dataclass whose every field is declared input, target or meta.

    `model_inputs()` is the one way a module gets what its model is called with, so the call site and the
    signature check read the same declaration. `image_fields` names the input fields that hold pixels: the
    preflight blanks them for its blind baseline and differentiates through them for sample independence.
    """

    image_fields: ClassVar[tuple[str, ...]] = ()

    def model_inputs(self) -> dict[str, Any]:
        """The input fields of this batch by name: exactly the model's keyword arguments."""
        return {name: getattr(self, name) for name in fields_with_role(type(self), "input")}

    def first(self, count: int) -> Self:
        """The same batch cut to its first `count` samples (for pictures and probes)."""
        values = {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}
        return type(self)(**{name: None if value is None else value[:count] for name, value in values.items()})

    def __len__(self) -> int:
        """The number of samples."""
        raise NotImplementedError(f"{type(self).__name__} must say how many samples it holds")


@functools.cache
def fields_with_role(batch_type: type, role: Role) -> tuple[str, ...]:
    """Names of the fields of a batch dataclass that carry `role`."""
    names = []
    for item in dataclasses.fields(batch_type):
        item_role = item.metadata.get("role")
        if item_role is None:
            raise TypeError(f"{batch_type.__name__}.{item.name} has no role: declare it with input/target/meta")
        if item_role == role:
            names.append(item.name)
    return tuple(names)


def forward_parameters(model: nn.Module) -> tuple[set[str], set[str], bool]:
    """The forward's (required, optional) keyword names, and whether it takes **kwargs."""
    signature = inspect.signature(model.forward)
    required, optional, var_keyword = set(), set(), False
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            var_keyword = True
        elif parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            (optional if parameter.default is not inspect.Parameter.empty else required).add(parameter.name)
    return required, optional, var_keyword


def check_forward_accepts(model: nn.Module, batch_type: type) -> None:
    """Raise ConfigError unless `model.forward` takes every input field of `batch_type` and needs no other."""
    inputs = set(fields_with_role(batch_type, "input"))
    required, optional, var_keyword = forward_parameters(model)
    unknown = inputs - required - optional
    if unknown and not var_keyword:
        raise ConfigError(
            f"{type(model).__name__}.forward does not accept {sorted(unknown)} from {batch_type.__name__} "
            f"(it takes {sorted(required | optional)}): change the model or the batch's input fields"
        )
    missing = required - inputs
    if missing:
        raise ConfigError(
            f"{type(model).__name__}.forward requires {sorted(missing)}, which {batch_type.__name__} does not "
            f"provide as inputs (inputs: {sorted(inputs)})"
        )
