"""Sharded strategies for large models: FSDP wrapping each transformer block, and DeepSpeed's ZeRO stages.

FSDP shards what its auto-wrap policy wraps; wrapping each transformer block (a unit that runs whole, whose
parameters are gathered for it and freed after) is what the field does for CLIP towers and VLM decoders alike.
The blocks are found by class: every transformers encoder and decoder layer (CLIP, SigLIP, BERT, Llama,
Qwen2-VL, ...) derives from `GradientCheckpointingLayer`, and timm's vision transformers use `Block`.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from pytorch_lightning.strategies import DeepSpeedStrategy, FSDPStrategy
from timm.models.vision_transformer import Block as TimmBlock
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from transformers.modeling_layers import GradientCheckpointingLayer

from vigil.core.errors import ConfigError

TRANSFORMER_BLOCKS = {GradientCheckpointingLayer, TimmBlock}
ZERO_STAGES = (1, 2, 3)


def fsdp_strategy(
    sharding_strategy: str = "FULL_SHARD",
    state_dict_type: str = "full",
    cpu_offload: bool = False,
    process_group_backend: str | None = None,
) -> FSDPStrategy:
    """Lightning's FSDPStrategy with every transformer block wrapped (sharded) on its own."""
    return FSDPStrategy(
        auto_wrap_policy=ModuleWrapPolicy(TRANSFORMER_BLOCKS),
        sharding_strategy=sharding_strategy,
        state_dict_type=state_dict_type,
        cpu_offload=cpu_offload,
        process_group_backend=process_group_backend,
    )


def deepspeed_strategy(
    stage: int = 2, offload_optimizer: bool = False, offload_parameters: bool = False, **config: Any
) -> DeepSpeedStrategy:
    """Lightning's DeepSpeedStrategy at ZeRO `stage` (1: optimizer states, 2: + gradients, 3: + parameters
    sharded), optionally offloading to CPU memory. Needs the `deepspeed` package, which vigil does not install."""
    if stage not in ZERO_STAGES:
        raise ConfigError(f"trainer.strategy.stage={stage} is not a ZeRO stage; valid: 1, 2, 3")
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("trainer=deepspeed needs the deepspeed package: install it (uv add deepspeed) on a CUDA host")
    return DeepSpeedStrategy(
        stage=stage, offload_optimizer=offload_optimizer, offload_parameters=offload_parameters, **config
    )
