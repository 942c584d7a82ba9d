"""trainer=fsdp and trainer=deepspeed: they compose into Lightning strategies; FSDP's policy wraps each transformer
block of a joint checkpoint, and the wrapped model, sharded over two gloo processes, computes what the whole does.

Lightning's FSDPStrategy accepts only GPU accelerators, so the two-process run here wraps with torch's FSDP
directly, with the policy the strategy is configured with.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra.utils import instantiate
from test_config import compose_train, validate
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

from vigil.core.errors import exit_on_vigil_error
from vigil.tasks.contrastive.pretrained import pretrained_dual_encoder

WORLD = 2


def strategy_of(trainer: str):
    cfg, choices = compose_train(["task=contrastive", "model=clip", f"trainer={trainer}"])
    validate(cfg, choices)
    return instantiate(cfg.trainer.strategy)


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, 64, 64, generator=generator)
    return image, torch.tensor([[0, 5, 6, 1], [0, 7, 1, 1]]), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])


def worker(rank: int, port: int, cache: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    policy = strategy_of("fsdp").kwargs["auto_wrap_policy"]
    model = pretrained_dual_encoder("tiny", cache).eval()
    wrapped = FSDP(model, auto_wrap_policy=policy, device_id=torch.device("cpu"))
    units = sum(isinstance(module, FSDP) for module in wrapped.modules())
    with torch.no_grad():
        output = wrapped(*inputs())
    torch.save({"units": units, "image": output.image_embeds, "text": output.text_embeds}, Path(out) / f"{rank}.pt")
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_fsdp_shards_each_transformer_block_and_computes_what_the_whole_model_does(tmp_path: Path):
    cache = tmp_path / "cache"
    model = pretrained_dual_encoder("tiny", str(cache)).eval()
    blocks = len(model.model.vision_model.encoder.layers) + len(model.model.text_model.encoder.layers)
    mp.spawn(worker, args=(free_port(), str(cache), str(tmp_path)), nprocs=WORLD, join=True)
    with torch.no_grad():
        expected = model(*inputs())
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"{rank}.pt")
        assert result["units"] == blocks + 1, "one unit per block, and the root"
        torch.testing.assert_close(result["image"], expected.image_embeds)
        torch.testing.assert_close(result["text"], expected.text_embeds)


def reported_error(build: Callable[[], object], capsys: pytest.CaptureFixture) -> str:
    """What the command line prints when `build` fails (exit 1 and one line)."""
    with pytest.raises(SystemExit) as exited:
        exit_on_vigil_error(build)()
    assert exited.value.code == 1
    return capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed")
def test_deepspeed_without_the_package_is_one_config_error(capsys: pytest.CaptureFixture):
    message = reported_error(lambda: strategy_of("deepspeed"), capsys)
    assert message == (
        "ConfigError: trainer=deepspeed needs the deepspeed package: install it (uv add deepspeed) on a CUDA host\n"
    )


def test_deepspeed_refuses_a_stage_zero_does_not_have(capsys: pytest.CaptureFixture):
    cfg, _ = compose_train(["task=contrastive", "trainer=deepspeed", "trainer.strategy.stage=4"])
    message = reported_error(lambda: instantiate(cfg.trainer.strategy), capsys)
    assert message == "ConfigError: trainer.strategy.stage=4 is not a ZeRO stage; valid: 1, 2, 3\n"
