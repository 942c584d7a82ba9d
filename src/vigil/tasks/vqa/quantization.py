"""Fitting a large VLM on a small GPU: QLoRA (`model.quantization=4bit|8bit`) and `model.gradient_checkpointing`.

QLoRA as its authors and peft describe it: the frozen base loaded in 4-bit NF4 (double quantisation, bfloat16
compute) or 8-bit through bitsandbytes' `BitsAndBytesConfig`, prepared with peft's
`prepare_model_for_kbit_training` (norms in float32, input gradients for checkpointing), and LoRA adapters that
train on top. bitsandbytes' kernels need CUDA: without a GPU or without the package, the run stops before any
work with one line saying so.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

import torch
from peft import prepare_model_for_kbit_training
from transformers import BitsAndBytesConfig, PreTrainedModel

from vigil.core.errors import ConfigError

QuantizationName = Literal["4bit", "8bit"]
QUANTIZATIONS = ("4bit", "8bit")


def quantization_config(quantization: str | None, has_lora: bool) -> BitsAndBytesConfig | None:
    """The bitsandbytes configuration of `quantization` (None: full weights), after checking it can run here."""
    if quantization is None:
        return None
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"model.quantization={quantization} is not a quantization; valid: 4bit, 8bit, null")
    if not has_lora:
        raise ConfigError(
            f"model.quantization={quantization}: quantized weights do not train; set model.lora (QLoRA trains "
            "adapters on the quantized base)"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            f"model.quantization={quantization} needs the bitsandbytes package, which is not installed "
            "(uv add bitsandbytes, on a machine with a CUDA GPU)"
        )
    if not torch.cuda.is_available():
        raise ConfigError(
            f"model.quantization={quantization} needs a CUDA GPU (bitsandbytes' kernels); none is available here "
            "(set model.quantization=null)"
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def prepare_for_training(model: PreTrainedModel, quantized: bool, gradient_checkpointing: bool) -> Any:
    """A quantized base prepared by peft for k-bit training; gradient checkpointing on when asked.

    Checkpointing is non-reentrant (`use_reentrant=False`): it needs no gradient on the inputs, so it works with a
    frozen embedding under LoRA, and recomputes each decoder layer in the backward pass instead of storing it.
    """
    kwargs = {"use_reentrant": False}
    if quantized:
        return prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing, gradient_checkpointing_kwargs=kwargs
        )
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model
