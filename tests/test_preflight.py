"""The preflight: each check passes on every task's clean default and catches its injected bug (`preflight_bugs`).

Segmentation's cases run by default; the other tasks', the blind baselines and the command-line run are `slow`
(seconds each: they build a task and train it a few steps).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from conftest import TINY, read_json
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image
from preflight_bugs import DATA_BUGS, MODULE_BUGS, PLACES
from test_cape_cli import TINY_DATA as CAPE_DATA
from test_contrastive_cli import TINY_DATA as CONTRASTIVE_DATA
from test_vqa_cli import TINY_DATA as VQA_DATA

from vigil.core import leakage, preflight
from vigil.core.batch import Batch, model_input
from vigil.core.errors import PreflightError
from vigil.core.leakage import nearest_distances
from vigil.core.module import TaskModule
from vigil.core.randomness import random_state
from vigil.core.run import build_module, preflight_settings
from vigil.train import CONF_DIR

TASKS = {
    "segmentation": ["task=segmentation", *TINY[:3]],
    "contrastive": CONTRASTIVE_DATA,
    "cape": CAPE_DATA,
    "vqa": VQA_DATA,
}


@dataclasses.dataclass
class Built:
    """A task's run as the lifecycle builds it: the set-up data, the module, a trainer and the preflight settings."""

    task: str
    datamodule: pl.LightningDataModule
    module: TaskModule
    trainer: pl.Trainer
    settings: preflight.PreflightSettings

    def batch(self):
        return preflight.first_training_batches(self.datamodule, 1, torch.device("cpu"))[0]


def build(task: str, cache: Path, *overrides: str) -> Built:
    """Compose `vigil-train task=<task>` at its CLI tests' size and build it as `run.fit_and_score` does."""
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*TASKS[task], f"paths.cache_dir={cache}", *overrides])
    pl.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = build_module(cfg)
    module.use_context(datamodule.context())
    trainer = pl.Trainer(
        default_root_dir=str(cache.parent / f"run-{task}"), logger=False, enable_progress_bar=False, devices=1
    )
    settings = instantiate({**cfg.preflight, "enabled": True})
    return Built(task, datamodule, module, trainer, settings)


# Segmentation by default; every other task under `make test-all`.
EVERY_TASK = [task if task == "segmentation" else pytest.param(task, marks=pytest.mark.slow) for task in TASKS]


@pytest.fixture(params=list(TASKS))
def clean(request, synthetic_cache: Path) -> Built:
    return build(request.param, synthetic_cache)


def broken(task: str, bug: str, cache: Path) -> Built:
    built = build(task, cache)
    if bug in MODULE_BUGS:
        MODULE_BUGS[bug](built.module, task)
    else:
        DATA_BUGS[bug](built.datamodule, task)
    return built


@pytest.mark.slow
def test_clean_default_of_every_task_passes_the_checks_that_judge_it(clean: Built):
    report = preflight.run_preflight(clean.module, clean.datamodule, clean.settings, clean.trainer)
    verdicts = {check.name: check.verdict for check in report.checks}
    assert set(verdicts) == set(preflight.CHECKS)
    assert {verdicts[name] for name in ("gradients", "independence", "init_loss", "leakage", "batch_picture")} == {
        "pass"
    }, report.render()
    written = read_json(Path(clean.trainer.default_root_dir) / "preflight.json")
    assert [check["name"] for check in written["checks"]] == list(preflight.CHECKS)
    assert (Path(clean.trainer.default_root_dir) / "pictures" / "preflight_batch.png").stat().st_size > 0


@pytest.mark.parametrize("task", EVERY_TASK)
def test_gradient_check_names_the_parameters_of_a_detached_tower(task: str, synthetic_cache: Path):
    built = broken(task, "detach_tower", synthetic_cache)
    result = preflight.check_gradients(built.module, built.batch())
    assert result.verdict == "fail"
    tower = PLACES[task]["detach"]
    expected = {name for name, p in built.module.named_parameters() if name.startswith(tower) and p.requires_grad}
    assert set(result.details["without_gradient"]) == expected


@pytest.mark.parametrize("task", EVERY_TASK)
def test_independence_check_fails_on_a_transpose_that_mixes_the_batch(task: str, synthetic_cache: Path):
    built = broken(task, "mix_batch", synthetic_cache)
    result = preflight.check_independence(built.module, built.batch(), probe_samples=4)
    assert result.verdict == "fail", result.message
    assert result.value > 0


class ForwardOnly(TaskModule):
    """A module the independence check can probe: `forward_batch` only."""

    def training_loss(self, batch):
        raise NotImplementedError

    def evaluate(self, batch, split, batch_idx):
        raise NotImplementedError

    def log_metrics(self, split):
        raise NotImplementedError


def test_independence_check_is_exact_on_a_per_sample_network():
    """A network without batch coupling passes; one with a batch mean (even a tiny one) fails."""

    @dataclasses.dataclass
    class Pictures(Batch):
        image: torch.Tensor = model_input()
        image_fields = ("image",)

        def __len__(self):
            return self.image.shape[0]

    class Probe(ForwardOnly):
        def __init__(self, coupling: float):
            super().__init__(torch.nn.Linear(3, 2), torch.nn.Identity(), None, torch.optim.SGD)
            self.coupling = coupling

        def forward_batch(self, batch):
            output = self.model(batch.image)
            return output + self.coupling * output.mean(dim=0, keepdim=True)

    batch = Pictures(torch.randn(4, 3))
    assert preflight.check_independence(Probe(0.0), batch, 4).verdict == "pass"
    coupled = preflight.check_independence(Probe(1e-3), batch, 4)
    assert coupled.verdict == "fail" and coupled.details["coupled"] == {"output<-image": pytest.approx(0.0, abs=1e-2)}


def test_independence_check_differentiates_through_the_embeddings_of_token_inputs():
    """Token ids have no gradient; their embeddings do: a sequence model mixing the batch there is caught, and a
    frozen embedding is probed as well."""

    @dataclasses.dataclass
    class Tokens(Batch):
        input_ids: torch.Tensor = model_input()

        def __len__(self):
            return self.input_ids.shape[0]

    class Probe(ForwardOnly):
        def __init__(self, mix: bool):
            model = torch.nn.Embedding(10, 3).requires_grad_(False)
            super().__init__(model, torch.nn.Identity(), None, torch.optim.SGD)
            self.head = torch.nn.Linear(3, 2)
            self.mix = mix

        def forward_batch(self, batch):
            embeddings = self.model(batch.input_ids)
            if self.mix:
                embeddings = embeddings.transpose(0, 1).reshape(embeddings.shape)
            return self.head(embeddings).mean(dim=1)

    batch = Tokens(torch.randint(0, 10, (4, 5)))
    clean = preflight.check_independence(Probe(mix=False), batch, 4)
    assert clean.verdict == "pass" and "'model'" in clean.message
    mixed = preflight.check_independence(Probe(mix=True), batch, 4)
    assert mixed.verdict == "fail" and set(mixed.details["coupled"]) == {"output<-model"}


@pytest.mark.parametrize("task", EVERY_TASK)
def test_init_loss_check_warns_when_the_output_starts_far_from_chance(task: str, synthetic_cache: Path):
    built = broken(task, "scale_initial_output", synthetic_cache)
    result = preflight.check_init_loss(built.module, built.batch(), factor=2.0)
    assert result.verdict == "warn", result.message
    assert result.details["ratio"] > 2.0


@pytest.mark.slow
def test_chance_values_are_the_closed_forms(synthetic_cache: Path):
    """BCE at the foreground rate; ln(batch) for InfoNCE with one positive per caption; ln(vocabulary)."""
    segmentation = build("segmentation", synthetic_cache, "loss=bce")
    batch = segmentation.batch()
    counted = batch.mask[batch.annotated].float()
    rate = float(counted.mean())
    assert segmentation.module.chance_loss(batch) == pytest.approx(
        -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate)), rel=1e-4
    )
    contrastive = build("contrastive", synthetic_cache, "masking=diagonal")
    batch = contrastive.batch()
    assert contrastive.module.chance_loss(batch) == pytest.approx(math.log(len(batch)), rel=1e-5)
    vqa = build("vqa", synthetic_cache)
    batch = vqa.batch()
    vocabulary = vqa.module.forward_batch(batch).shape[-1]
    assert vqa.module.chance_loss(batch) == pytest.approx(math.log(vocabulary))
    logits = torch.zeros(1, 2, vocabulary)
    assert float(F.cross_entropy(logits[0], torch.tensor([0, 1]))) == pytest.approx(math.log(vocabulary))


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
def test_blind_baseline_warns_when_images_reach_the_model_blank(task: str, synthetic_cache: Path):
    clean = build(task, synthetic_cache)
    settings = clean.settings
    batches = preflight.first_training_batches(clean.datamodule, settings.blind_batches, torch.device("cpu"))
    with preflight.restoring(clean.module, torch.device("cpu")) as restore:
        sighted = preflight.check_blind_baseline(
            clean.module, batches, settings.blind_steps, settings.min_blind_loss_ratio, restore
        )
    built = broken(task, "blank_images", synthetic_cache)
    batches = preflight.first_training_batches(built.datamodule, settings.blind_batches, torch.device("cpu"))
    with preflight.restoring(built.module, torch.device("cpu")) as restore:
        blind = preflight.check_blind_baseline(
            built.module, batches, settings.blind_steps, settings.min_blind_loss_ratio, restore
        )
    assert sighted.verdict == "pass", sighted.message
    assert blind.verdict == "warn" and blind.value == pytest.approx(1.0, abs=0.02), blind.message


def test_image_hashes_from_the_process_pool_are_the_serial_ones_and_cached(tmp_path: Path, monkeypatch):
    noise = np.random.default_rng(0).integers(0, 256, (12, 40, 48, 3), dtype=np.uint8)
    paths = [tmp_path / "images" / f"{index}.jpg" for index in range(len(noise))]
    paths[0].parent.mkdir()
    for path, pixels in zip(paths, noise, strict=True):
        Image.fromarray(pixels).save(path)
    serial = [leakage.image_hash(path) for path in paths]
    monkeypatch.setattr(leakage, "POOL_MIN_FILES", 4)
    monkeypatch.setattr(leakage, "available_cpus", lambda: 2)
    assert leakage.image_hashes(paths) == serial
    cache = leakage.HashCache(tmp_path / "cache", tmp_path)
    _, values = cache.hashes(paths)
    cache.save()
    assert [bytes(row.astype(">u8").tobytes()).hex() for row in values] == serial
    monkeypatch.setattr(leakage, "image_hashes", lambda stale: [] if not stale else pytest.fail(f"rehashed {stale}"))
    _, again = leakage.HashCache(tmp_path / "cache", tmp_path).hashes(paths)
    assert np.array_equal(again, values)


@pytest.mark.parametrize("task", EVERY_TASK)
def test_leakage_check_fails_on_test_images_copied_into_train(task: str, tmp_path: Path):
    built = broken(task, "copy_test_images_into_train", tmp_path / "cache")
    result = preflight.check_leakage(built.datamodule, built.settings)
    assert result.verdict == "fail", result.message
    train_test = result.details["pairs"]["train/test"]
    assert train_test["duplicates"] >= 4
    assert all(distance == 0 for _, _, distance in train_test["examples"])


def test_near_duplicates_are_found_by_hamming_distance_over_all_words():
    references = np.array([[0, 0, 0, 0], [2**64 - 1, 0, 0, 0]], dtype=np.uint64)
    queries = np.array([[0b111, 0, 0, 0], [2**64 - 1, 1, 0, 1 << 63]], dtype=np.uint64)
    nearest, partner = nearest_distances(queries, references)
    assert nearest.tolist() == [3, 2] and partner.tolist() == [0, 1]


def test_a_failed_check_stops_the_run_after_writing_the_report(synthetic_cache: Path):
    built = broken("segmentation", "detach_tower", synthetic_cache)
    settings = dataclasses.replace(built.settings, checks=("gradients",))
    with pytest.raises(PreflightError, match="got no gradient"):
        preflight.run_preflight(built.module, built.datamodule, settings, built.trainer)
    written = read_json(Path(built.trainer.default_root_dir) / "preflight.json")
    assert written["checks"][0]["verdict"] == "fail"


@pytest.mark.slow
def test_preflight_leaves_weights_buffers_mode_and_random_state_as_it_found_them(synthetic_cache: Path):
    built = build("segmentation", synthetic_cache)
    before = {name: value.clone() for name, value in built.module.state_dict().items()}
    generators = random_state()
    built.module.train()
    settings = dataclasses.replace(built.settings, checks=("gradients", "independence", "blind_baseline"))
    preflight.run_preflight(built.module, built.datamodule, settings, built.trainer)
    after = built.module.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert built.module.training and all(p.grad is None for p in built.module.parameters())
    assert torch.equal(random_state()["torch"], generators["torch"])


def compose_train(*overrides: str):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_preflight_false_and_enabled_false_skip_it_and_the_default_runs_it(monkeypatch):
    monkeypatch.delenv("VIGIL_PREFLIGHT", raising=False)
    assert preflight_settings(compose_train("preflight=false")) is None
    assert preflight_settings(compose_train("preflight.enabled=false")) is None
    assert preflight_settings(compose_train("debug=fast")) is None
    settings = preflight_settings(compose_train())
    assert settings is not None and not settings.only and settings.checks == list(preflight.CHECKS)
    assert preflight_settings(compose_train("debug=preflight")).only


@pytest.mark.slow
def test_debug_preflight_runs_the_checks_alone_and_logs_them(cli, tmp_path: Path):
    run = tmp_path / "run"
    result = cli("train", "debug=preflight", "logger=csv", f"hydra.run.dir={run}", *TINY)
    assert result.returncode == 0, result.output
    assert "preflight (" in result.output and "PASS gradients" in result.output
    report = read_json(run / "preflight.json")
    assert {check["name"] for check in report["checks"]} == set(preflight.CHECKS)
    assert (run / "pictures" / "preflight_batch.png").is_file()
    assert not (run / "checkpoints").exists() and not (run / "metrics.json").exists()
    logged = (run / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"preflight/blind_loss_ratio", "preflight/leak_fraction", "preflight/no_gradient"} <= set(logged)


def test_blind_baseline_trains_in_the_trainers_precision(synthetic_cache: Path, monkeypatch):
    built = build("segmentation", synthetic_cache)
    built.trainer = pl.Trainer(
        default_root_dir=built.trainer.default_root_dir,
        logger=False,
        enable_progress_bar=False,
        devices=1,
        precision="bf16-mixed",
    )
    autocast: list[bool] = []
    training_loss = built.module.training_loss

    def recording(batch: Batch):
        autocast.append(torch.is_autocast_enabled("cpu"))
        return training_loss(batch)

    monkeypatch.setattr(built.module, "training_loss", recording)
    settings = dataclasses.replace(built.settings, checks=("blind_baseline",), blind_steps=3)
    preflight.run_preflight(built.module, built.datamodule, settings, built.trainer)
    # Three steps and the loss of each batch, for the real images and again for the constant ones.
    assert len(autocast) == 2 * (3 + settings.blind_batches) and all(autocast)
