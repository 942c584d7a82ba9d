"""Training-step throughput: vigil's SegmentationModule under a Lightning Trainer vs a plain PyTorch loop.

Both train the same smp Unet (resnet18) with the configured loss and optimizer on the same in-memory batches;
the rounds alternate between the two so that machine noise hits both alike.
"""

from __future__ import annotations

import copy
import gc
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from benchmarks.common import Row, median, spread
from vigil.core.guardrails import HealthMonitor
from vigil.tasks.segmentation.masking import AnnotatedOnlyMasking
from vigil.tasks.segmentation.model import smp_model
from vigil.tasks.segmentation.module import SegmentationModule
from vigil.tasks.segmentation.records import SegmentationBatch
from vigil.train import CONF_DIR

NAME = "train_step"
OVERHEAD_GOAL = 0.05
BATCH_SIZE = 16
IMAGE_SIZE = 64
UNANNOTATED_FRACTION = 0.2
PROCESS_WARMUP_STEPS = 6


@dataclass(frozen=True)
class Setup:
    """What both loops share: the initial model, the loss, the optimizer factory and the batches."""

    model: nn.Module
    loss: nn.Module
    optimizer: Callable[..., torch.optim.Optimizer]
    batches: list[SegmentationBatch]


def configured(group_file: str, key: str | None = None) -> Any:
    """Instantiate a node of a file under conf/, with the data facts it interpolates (binary, no ignore_index)."""
    node = OmegaConf.load(Path(CONF_DIR) / group_file)
    root = OmegaConf.create({"data": {"num_classes": 1, "ignore_index": None}, "node": node})
    return instantiate(OmegaConf.select(root, f"node.{key}" if key else "node"))


def make_batches(count: int, seed: int = 0) -> list[SegmentationBatch]:
    """`count` random binary batches; about a fifth of the samples are unannotated (mask all zero)."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for index in range(count):
        image = torch.randn(BATCH_SIZE, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        mask = (torch.rand(BATCH_SIZE, IMAGE_SIZE, IMAGE_SIZE, generator=generator) < 0.25).long()
        annotated = torch.rand(BATCH_SIZE, generator=generator) >= UNANNOTATED_FRACTION
        # Every batch keeps something to learn from, as the plain loop and vigil then take the same path.
        annotated[0] = True
        mask[~annotated] = 0
        names = [f"b{index}_s{sample}" for sample in range(BATCH_SIZE)]
        batches.append(SegmentationBatch(image=image, mask=mask, annotated=annotated, name=names))
    return batches


def make_setup(batch_count: int) -> Setup:
    """The shared model, loss and optimizer as `conf/` configures them, and `batch_count` batches."""
    torch.manual_seed(0)
    return Setup(
        model=smp_model(arch="Unet", encoder="resnet18", encoder_weights=None, num_classes=1),
        loss=configured("loss/combined.yaml"),
        optimizer=configured("task/segmentation.yaml", "task.optimizer"),
        batches=make_batches(batch_count),
    )


def plain_round(model: nn.Module, setup: Setup, warmup: int, steps: int) -> float:
    """Train `warmup` then `steps` batches with a plain loop and a fresh optimizer; steps/s of the timed ones."""
    optimizer = setup.optimizer(params=model.parameters())
    model.train()
    start = 0.0
    for index, batch in enumerate(setup.batches[: warmup + steps]):
        if index == warmup:
            start = time.perf_counter()
        logits = model(image=batch.image)
        keep = batch.annotated
        loss = setup.loss(logits[keep], batch.mask[keep]) if keep.any() else logits.sum() * 0.0
        # Between forward and backward, where Lightning's closure zeroes them too (set_to_none by default).
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps / (time.perf_counter() - start)


class BatchClock(pl.Callback):
    """Stamps the start of every training batch, so fit's setup and teardown stay out of the timing."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.threads = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        """Record when this batch starts."""
        self.starts.append(time.perf_counter())
        self.threads = torch.get_num_threads()


def health_monitor() -> HealthMonitor:
    """The HealthMonitor exactly as `conf/callbacks/health.yaml` configures it."""
    return configured("callbacks/health.yaml", "health_monitor")


def vigil_trainer(max_steps: int, clock: BatchClock) -> pl.Trainer:
    """A CPU Trainer without logger, checkpoints, progress bar, summary or validation."""
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=5,
        callbacks=[health_monitor(), clock],
    )


def vigil_round(module: SegmentationModule, setup: Setup, warmup: int, steps: int) -> tuple[float, int]:
    """Fit `warmup + steps + 1` batches; steps/s from the start of batch `warmup` to that of `warmup + steps`.

    Also returns the torch thread count seen inside the fit, to confirm Lightning left it alone.
    """
    clock = BatchClock()
    # batch_size=None hands each ready-made batch through unchanged, like the plain loop sees it.
    loader = DataLoader(setup.batches[: warmup + steps + 1], batch_size=None, shuffle=False)
    vigil_trainer(warmup + steps + 1, clock).fit(module, train_dataloaders=loader)
    return steps / (clock.starts[warmup + steps] - clock.starts[warmup]), clock.threads


def quiet_lightning() -> None:
    """Silence Lightning's banners and dataloader hints; they are noise in a benchmark's output."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", module="lightning_fabric")


def measure(setup: Setup, rounds: int, warmup: int, steps: int) -> tuple[list[float], list[float], int]:
    """Alternate plain and vigil rounds (plain first, then vigil first, ...); steps/s of each round."""
    plain_model = copy.deepcopy(setup.model)
    module = SegmentationModule(
        model=copy.deepcopy(setup.model),
        loss=copy.deepcopy(setup.loss),
        masking=AnnotatedOnlyMasking(),
        optimizer=setup.optimizer,
        num_classes=1,
    )
    # An untimed pass first: the first few steps of a process run several times slower (cold allocator and
    # kernel caches), which would otherwise land on whichever side goes first.
    plain_round(copy.deepcopy(setup.model), setup, warmup=PROCESS_WARMUP_STEPS, steps=1)
    plain, vigil, threads = [], [], 0
    for index in range(rounds):
        order = ("plain", "vigil") if index % 2 == 0 else ("vigil", "plain")
        for side in order:
            gc.collect()
            if side == "plain":
                plain.append(plain_round(plain_model, setup, warmup, steps))
            else:
                rate, threads = vigil_round(module, setup, warmup, steps)
                vigil.append(rate)
    return plain, vigil, threads


def train_step(args: Any) -> list[Row]:
    """Steps/s of the plain loop and of vigil, and vigil's time-per-step overhead (median of paired rounds)."""
    quiet_lightning()
    torch.set_num_threads(args.threads)
    setup = make_setup(max(args.warmup + args.steps + 1, PROCESS_WARMUP_STEPS + 1))
    plain, vigil, threads = measure(setup, args.rounds, args.warmup, args.steps)
    ratios = [p / v for p, v in zip(plain, vigil, strict=True)]
    extra_ms = [1000 / v - 1000 / p for p, v in zip(plain, vigil, strict=True)]
    overhead = median(ratios) - 1.0
    shape = f"{BATCH_SIZE}x3x{IMAGE_SIZE}x{IMAGE_SIZE}"
    context = f"{args.rounds} rounds x {args.steps} steps, {shape}, torch threads {args.threads} (in fit: {threads})"
    return [
        Row(NAME, "plain loop", median(plain), "steps/s", note=context, samples=plain),
        Row(NAME, "vigil (Trainer + HealthMonitor)", median(vigil), "steps/s", samples=vigil),
        Row(NAME, "time/step ratio vigil/plain", median(ratios), "x", note=f"rounds {spread(ratios)}", samples=ratios),
        Row(NAME, "vigil extra time per step", median(extra_ms), "ms", note=f"rounds {spread(extra_ms, 1)}"),
        Row(
            NAME,
            "vigil overhead",
            overhead * 100,
            "%",
            goal=f"< {OVERHEAD_GOAL:.0%}",
            note="within goal" if overhead < OVERHEAD_GOAL else "above goal",
        ),
    ]
