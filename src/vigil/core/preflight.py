"""Preflight: the checks an expert runs by hand before a long run, run for every task before the first epoch.

Every trainable parameter gets a gradient; samples of a batch do not depend on each other; the loss at
initialisation is near the task's chance value; a short training with constant images ends clearly worse than one
with the real images; the first training batch is drawn as the model sees it; no image of one split is a
near-duplicate of another split's. The checks are written once here; a task fills in the hooks of its module
(`TaskModule.preflight_outputs`, `chance_loss`, `preflight_figure`, `unused_parameters`), declares its image
inputs on its batch (`Batch.image_fields`) and lists its image files (`TaskDataModule.image_files`).

Preflight leaves the run as it found it: the module's weights, modes and gradients, and the global random state,
are restored after the checks, so a run with preflight trains exactly like one without it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fnmatch
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only
from torch import nn

from vigil.core.batch import Batch
from vigil.core.data import TaskDataModule
from vigil.core.errors import PreflightError
from vigil.core.leakage import split_leakage
from vigil.core.module import TaskModule
from vigil.core.pictures import publish_figure
from vigil.core.randomness import random_state, set_random_state

log = logging.getLogger(__name__)
Verdict = Literal["pass", "warn", "fail", "skip"]
CHECKS = ("gradients", "independence", "init_loss", "blind_baseline", "batch_picture", "leakage")
REPORT_FILE = "preflight.json"


@dataclass(frozen=True)
class PreflightSettings:
    """The `preflight:` block of a run: which checks run and their thresholds.

    `only` runs the checks and exits without training (`debug=preflight`). Hashes of image files are kept under
    `cache_dir`, so the leakage check of a data set hashes each image once.
    """

    enabled: bool = True
    only: bool = False
    checks: tuple[str, ...] = CHECKS
    fail_on_error: bool = True
    # Samples of the first batch whose outputs are differentiated against the others' inputs.
    probe_samples: int = 4
    # Warn when the loss at initialisation is more than this factor away from the chance value.
    init_loss_factor: float = 2.0
    # The blind baseline: optimizer steps on the first `blind_batches` training batches, with real and constant
    # images; the blind run's final loss must be at least `min_blind_loss_ratio` times the real one.
    blind_steps: int = 6
    blind_batches: int = 1
    min_blind_loss_ratio: float = 1.1
    # Two images are near-duplicates when their perceptual hashes differ in at most this many of 256 bits.
    max_hash_distance: int = 10
    # The leakage check fails when more than this fraction of a split's images have a near-duplicate in another.
    max_leak_fraction: float = 0.01
    cache_dir: str = "outputs/cache"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.checks) - set(CHECKS))
        if unknown:
            raise ValueError(f"preflight.checks: unknown {unknown}; the checks are {list(CHECKS)}")


@dataclass
class CheckResult:
    """One check's verdict, its number (what `preflight/<name>` logs) and what it means."""

    name: str
    verdict: Verdict
    value: float | None
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class PreflightReport:
    """Every check's result and how long preflight took."""

    checks: list[CheckResult] = field(default_factory=list)
    seconds: float = 0.0

    def failures(self) -> list[CheckResult]:
        """The checks that failed."""
        return [check for check in self.checks if check.verdict == "fail"]

    def to_json(self, path: Path) -> None:
        """Write the report as `preflight.json`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    def scalars(self) -> dict[str, float]:
        """Each check's number as `preflight/<name>` (the blind baseline's as `preflight/blind_loss_ratio`)."""
        values = {f"preflight/{METRIC_NAMES.get(c.name, c.name)}": c.value for c in self.checks if c.value is not None}
        values["preflight/seconds"] = self.seconds
        return values

    def render(self) -> str:
        """A short human-readable summary for the terminal."""
        lines = [f"preflight ({self.seconds:.1f} s):"]
        for check in self.checks:
            number = "" if check.value is None else f" {check.value:.4g}"
            lines.append(f"  {check.verdict.upper():4} {check.name}{number} ({check.seconds:.1f} s): {check.message}")
        return "\n".join(lines)


METRIC_NAMES = {"blind_baseline": "blind_loss_ratio", "leakage": "leak_fraction", "gradients": "no_gradient"}


def run_preflight(
    module: TaskModule, datamodule: TaskDataModule, settings: PreflightSettings, trainer: pl.Trainer
) -> PreflightReport:
    """Run the configured checks on the first training batches; write `preflight.json`, log, and raise
    PreflightError when a check failed (unless `fail_on_error` is false)."""
    started = time.perf_counter()
    report = PreflightReport()
    module.use_context(datamodule.context())
    with restoring(module, trainer.strategy.root_device) as restore:
        batches = first_training_batches(datamodule, max(settings.blind_batches, 1), trainer.strategy.root_device)
        batch = batches[0]
        checks: dict[str, Callable[[], CheckResult]] = {
            "gradients": lambda: check_gradients(module, batch),
            "independence": lambda: check_independence(module, batch, settings.probe_samples),
            "init_loss": lambda: check_init_loss(module, batch, settings.init_loss_factor),
            "blind_baseline": lambda: check_blind_baseline(
                module,
                batches,
                settings.blind_steps,
                settings.min_blind_loss_ratio,
                restore,
                precision=trainer.precision_plugin.forward_context,
            ),
            "batch_picture": lambda: draw_batch(module, batch, trainer),
            "leakage": lambda: check_leakage(datamodule, settings),
        }
        for name in CHECKS:
            if name in settings.checks:
                report.checks.append(timed(checks[name]))
                restore()
    report.seconds = time.perf_counter() - started
    publish_report(report, trainer)
    failures = report.failures()
    if failures and settings.fail_on_error:
        raise PreflightError(f"{len(failures)} preflight check(s) failed: " + "; ".join(c.message for c in failures))
    return report


def timed(check: Callable[[], CheckResult]) -> CheckResult:
    """Run a check and record how long it took."""
    started = time.perf_counter()
    result = check()
    result.seconds = time.perf_counter() - started
    return result


def first_training_batches(datamodule: TaskDataModule, count: int, device: torch.device) -> list[Batch]:
    """The first `count` batches of the training loader as the first epoch draws them, on `device`."""
    batches = []
    for batch in datamodule.train_dataloader():
        batches.append(move_batch(batch, device))
        if len(batches) == count:
            break
    return batches


def move_batch(batch: Batch, device: torch.device) -> Batch:
    """The batch with its tensors on `device`."""
    values = {
        item.name: value.to(device) if isinstance(value := getattr(batch, item.name), torch.Tensor) else value
        for item in dataclasses.fields(batch)
    }
    return type(batch)(**values)


@contextlib.contextmanager
def restoring(module: TaskModule, device: torch.device) -> Iterator[Callable[[], None]]:
    """Run the checks on `device`; yield a function that puts the module's weights, buffers, mode and gradients
    and the global random state back as they were (each check starts from the untrained model), and give the
    module back on its own device at the end."""
    state, rng, training = copy.deepcopy(module.state_dict()), random_state(), module.training
    home = next(module.parameters()).device

    def restore() -> None:
        module.load_state_dict(state)
        module.zero_grad(set_to_none=True)
        module.train(training)
        set_random_state(rng)

    module.to(device)
    try:
        yield restore
    finally:
        restore()
        module.to(home)


def check_gradients(module: TaskModule, batch: Batch) -> CheckResult:
    """Over two training steps on the first batch, every trainable parameter gets a non-zero gradient, except
    those the task declares unused (`TaskModule.unused_parameters`).

    Two steps, because zero-initialised residual branches (timm's last batch-norm gain of a block) pass no
    gradient to the block's other layers until the first update has made the gain non-zero.
    """
    optimizer = configured_optimizer(module)
    module.train()
    reached: set[str] = set()
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        module.training_loss(batch).loss.backward()
        reached |= {name for name, p in module.named_parameters() if p.grad is not None and bool(p.grad.any())}
        optimizer.step()
    declared = module.unused_parameters()
    missing, excused = [], []
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad or name in reached:
            continue
        (excused if any(fnmatch.fnmatch(name, pattern) for pattern in declared) else missing).append(name)
    module.zero_grad(set_to_none=True)
    details = {"without_gradient": missing, "declared_unused": excused}
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        return CheckResult(
            "gradients",
            "fail",
            len(missing),
            f"{len(missing)} trainable parameter(s) got no gradient from the training loss: {shown} (a detached "
            "feature, a tower left out of the loss, adapters not attached? declare legitimately unused ones in the "
            "module's unused_parameters())",
            details,
        )
    return CheckResult(
        "gradients", "pass", 0, f"every trainable parameter got a gradient ({len(excused)} declared unused)", details
    )


def check_independence(module: TaskModule, batch: Batch, probe_samples: int) -> CheckResult:
    """In eval mode, the gradient of each probed sample's outputs with respect to every other sample's inputs is
    exactly zero: its image inputs, and the output of every embedding layer (token ids have no gradient, their
    embeddings do)."""
    module.eval()
    probe = batch.first(min(probe_samples, len(batch)))
    size = len(probe)
    images = {
        name: getattr(probe, name).detach().clone().requires_grad_(True)
        for name in type(probe).image_fields
        if is_per_sample(getattr(probe, name), size)
    }
    with embedding_outputs(module, size) as embeddings:
        outputs = module.preflight_outputs(dataclasses.replace(probe, **images))
    inputs = {**images, **embeddings}
    if size < 2 or not inputs:
        return CheckResult("independence", "skip", None, "needs two samples and a per-sample input")
    coupled: dict[str, float] = {}
    for output_name, output in outputs.items():
        if not output.requires_grad:
            continue
        for sample in range(size):
            grads = torch.autograd.grad(
                output[sample].sum(), list(inputs.values()), retain_graph=True, allow_unused=True
            )
            for input_name, grad in zip(inputs, grads, strict=True):
                if grad is None:
                    continue
                others = torch.cat([grad[:sample], grad[sample + 1 :]])
                leak = float(others.abs().max())
                if leak > 0:
                    key = f"{output_name}<-{input_name}"
                    coupled[key] = max(coupled.get(key, 0.0), leak)
    module.zero_grad(set_to_none=True)
    if coupled:
        names = ", ".join(sorted(coupled))
        return CheckResult(
            "independence",
            "fail",
            max(coupled.values()),
            f"samples of a batch are coupled in eval mode: {names} has a gradient from other samples' inputs "
            "(a reshape or transpose that mixes the batch dimension?)",
            {"coupled": coupled, "probe_samples": size},
        )
    return CheckResult(
        "independence", "pass", 0.0, f"outputs {sorted(outputs)} depend only on their own sample's {sorted(inputs)}"
    )


@contextlib.contextmanager
def embedding_outputs(module: nn.Module, size: int) -> Iterator[dict[str, torch.Tensor]]:
    """While open, every per-sample output of an `nn.Embedding` of `module` is replaced by a copy that requires
    grad (a frozen embedding's output has none), collected under the layer's name (`name#2` for a second call)."""
    collected: dict[str, torch.Tensor] = {}
    calls: Counter[str] = Counter()

    def capture(name: str) -> Callable[..., torch.Tensor | None]:
        def hook(_layer: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor | None:
            if not is_per_sample(output, size):
                return None
            calls[name] += 1
            key = name if calls[name] == 1 else f"{name}#{calls[name]}"
            collected[key] = output.detach().requires_grad_(True)
            return collected[key]

        return hook

    layers = [(name, layer) for name, layer in module.named_modules() if isinstance(layer, nn.Embedding)]
    handles = [layer.register_forward_hook(capture(name)) for name, layer in layers]
    try:
        yield collected
    finally:
        for handle in handles:
            handle.remove()


def is_per_sample(value: Any, size: int) -> bool:
    """A float tensor with one row per sample (Qwen2-VL's flattened patches are not)."""
    return isinstance(value, torch.Tensor) and value.is_floating_point() and value.ndim > 0 and value.shape[0] == size


@torch.no_grad()
def check_init_loss(module: TaskModule, batch: Batch, factor: float) -> CheckResult:
    """The training loss of the untrained model against the task's chance value (`TaskModule.chance_loss`)."""
    module.eval()
    loss = float(module.training_loss(batch).loss)
    chance = module.chance_loss(batch)
    if chance is None or chance <= 0:
        return CheckResult("init_loss", "skip", loss, "the task declares no chance value", {"init_loss": loss})
    ratio = loss / chance
    details = {"init_loss": loss, "chance_loss": chance, "ratio": ratio}
    if abs(math.log(ratio)) > math.log(factor):
        return CheckResult(
            "init_loss",
            "warn",
            loss,
            f"loss at initialisation {loss:.4g} is {ratio:.2f} x the chance value {chance:.4g} (more than {factor:g}x "
            "off: an initialisation, a temperature or a loss scale that starts far from uninformed?)",
            details,
        )
    return CheckResult("init_loss", "pass", loss, f"loss at initialisation {loss:.4g}, chance {chance:.4g}", details)


def check_blind_baseline(
    module: TaskModule,
    batches: list[Batch],
    steps: int,
    min_ratio: float,
    restore: Callable[[], None],
    precision: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> CheckResult:
    """Train `steps` steps from the initial weights on the real batches, then (after `restore`, from the same
    weights and random state) on the same batches with every image input replaced by a constant; the blind run
    must end with a clearly higher loss. `precision`: the context the run's forward passes run in (the trainer's
    autocast), so that both short trainings compute as the run does."""
    real = short_training_loss(module, batches, steps, precision)
    restore()
    blind = short_training_loss(module, [constant_images(batch) for batch in batches], steps, precision)
    ratio = blind / real if real > 0 else math.inf
    details = {"real_loss": real, "blind_loss": blind, "steps": steps, "batches": len(batches)}
    if ratio < min_ratio:
        return CheckResult(
            "blind_baseline",
            "warn",
            ratio,
            f"with constant images the loss after {steps} steps is {blind:.4g} vs {real:.4g} with the real ones "
            f"(ratio {ratio:.3f} < {min_ratio:g}): the model does not use the image yet, or the targets are "
            "answerable without it",
            details,
        )
    return CheckResult("blind_baseline", "pass", ratio, f"blind loss {blind:.4g} vs real {real:.4g}", details)


def short_training_loss(
    module: TaskModule,
    batches: list[Batch],
    steps: int,
    precision: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> float:
    """The mean training loss on `batches` after `steps` optimizer steps on them, the forward passes in
    `precision`.

    The configured optimizer without its scheduler (and without a float16 run's loss scaling). The loss is
    measured in training mode, as training sees it: batch-norm statistics of constant images, still converging
    after so few steps, would otherwise dominate the blind run's loss.
    """
    optimizer = configured_optimizer(module)
    module.train()
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        with precision():
            loss = module.training_loss(batches[step % len(batches)]).loss
        loss.backward()
        optimizer.step()
    module.zero_grad(set_to_none=True)
    with torch.no_grad(), precision():
        return sum(float(module.training_loss(batch).loss) for batch in batches) / len(batches)


def configured_optimizer(module: TaskModule) -> torch.optim.Optimizer:
    """A fresh optimizer as the run configures it, without its scheduler: building one already scales the
    learning rate (a warm-up's start factor), which would leave these few steps without learning."""
    return module.build_optimizer()


def constant_images(batch: Batch) -> Batch:
    """The batch with every image input set to zero: the data set's mean colour, after normalisation."""
    return dataclasses.replace(batch, **{name: torch.zeros_like(getattr(batch, name)) for name in batch.image_fields})


def draw_batch(module: TaskModule, batch: Batch, trainer: pl.Trainer) -> CheckResult:
    """`pictures/preflight_batch.png`: the first training batch as the model gets it, with its targets."""
    if not trainer.is_global_zero:
        return CheckResult("batch_picture", "skip", None, "drawn on rank zero")
    figure = module.preflight_figure(batch)
    if figure is None:
        return CheckResult("batch_picture", "skip", None, "the task draws no preflight picture")
    path = publish_figure(trainer, figure, "preflight_batch", filename="preflight_batch.png")
    return CheckResult("batch_picture", "pass", None, f"the first training batch is drawn in {path.name}")


def check_leakage(datamodule: TaskDataModule, settings: PreflightSettings) -> CheckResult:
    """Exact and near-duplicate images across the splits, by perceptual hash; fails above `max_leak_fraction`."""
    files = {split: datamodule.image_files(split) for split in ("train", "val", "test")}
    if not any(files.values()):
        return CheckResult("leakage", "skip", None, "the data module lists no image files")
    pairs = split_leakage(files, datamodule.data_root, Path(settings.cache_dir), settings.max_hash_distance)
    worst = max(pairs.values(), key=lambda pair: pair["fraction"])
    details = {"pairs": pairs, "max_hash_distance": settings.max_hash_distance}
    summary = ", ".join(f"{name} {pair['duplicates']}/{pair['images']}" for name, pair in pairs.items())
    if worst["fraction"] > settings.max_leak_fraction:
        return CheckResult(
            "leakage",
            "fail",
            worst["fraction"],
            f"near-duplicate images across splits ({summary}; e.g. {worst['examples'][:2]}): above "
            f"preflight.max_leak_fraction={settings.max_leak_fraction:g}, held-out scores would be inflated "
            "(split by video, patient or source, not by frame)",
            details,
        )
    verdict: Verdict = "warn" if worst["duplicates"] else "pass"
    return CheckResult("leakage", verdict, worst["fraction"], f"near-duplicates across splits: {summary}", details)


def publish_report(report: PreflightReport, trainer: pl.Trainer) -> None:
    """Write `preflight.json`, print the summary and log the numbers (rank zero)."""
    if rank_zero_only.rank != 0:
        return
    report.to_json(Path(trainer.default_root_dir) / REPORT_FILE)
    log.info("\n%s", report.render())
    for check in report.checks:
        if check.verdict in ("warn", "fail"):
            log.warning("preflight %s: %s", check.name, check.message)
    for logger in trainer.loggers:
        logger.log_metrics(report.scalars(), step=0)
