"""The preflight study: for each injected bug, the preflight's verdict on the clean and on the broken run, and how
long the broken run trains before anything else in vigil (audit, health monitors stopping on alert, the finite-loss
check) notices.

Run from the repository root: `python experiments/preflight_catches/run.py [--epochs N] [--train-tasks ...]`. It
writes `results.json` and prints the README's table. Each task runs at the size of its CLI tests
(tests/test_*_cli.py). A broken run skips the blind baseline (the costly check: two short trainings) unless its
bug blanks the images; the trainings without preflight run for `--train-tasks` only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
from pathlib import Path

import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from preflight_bugs import DATA_BUGS, MODULE_BUGS  # noqa: E402
from test_preflight import TASKS, build  # noqa: E402

from vigil.core import preflight  # noqa: E402
from vigil.core.errors import VigilError  # noqa: E402
from vigil.train import CONF_DIR  # noqa: E402

# The bug each check is meant for, per task (shift_masks is a segmentation bug: only its picture shows it).
BUGS = {
    "segmentation": [
        "detach_tower",
        "mix_batch",
        "scale_initial_output",
        "blank_images",
        "shift_masks",
        "copy_test_images_into_train",
    ],
    "contrastive": ["detach_tower", "mix_batch", "scale_initial_output", "blank_images", "copy_test_images_into_train"],
    "cape": ["detach_tower", "mix_batch", "scale_initial_output", "blank_images", "copy_test_images_into_train"],
    "vqa": ["detach_tower", "mix_batch", "scale_initial_output", "blank_images", "copy_test_images_into_train"],
}


def main() -> None:
    """Every task's clean run and each of its bugs: preflight verdicts, then a training without preflight."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--train-tasks", nargs="*", default=["segmentation"])
    arguments = parser.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    results = []
    for task in arguments.tasks:
        for bug in [None, *BUGS[task]]:
            epochs = arguments.epochs if task in arguments.train_tasks else 0
            results.append(study(task, bug, epochs))
            print(json.dumps(results[-1]), flush=True)
    out = Path(__file__).parent / "results.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


def study(task: str, bug: str | None, epochs: int) -> dict:
    """The preflight's verdicts on one run, then `epochs` epochs of training with the default guardrails."""
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "cache"
        built = broken(task, bug, cache)
        # fail_on_error=false: the report of a failing check, instead of the error that stops a real run.
        checks = [name for name in preflight.CHECKS if name != "blind_baseline" or bug in (None, "blank_images")]
        settings = dataclasses.replace(built.settings, fail_on_error=False, checks=tuple(checks))
        report = preflight.run_preflight(built.module, built.datamodule, settings, built.trainer)
        verdicts = {check.name: verdict_of(check) for check in report.checks}
        noticed = train_without_preflight(broken(task, bug, Path(folder) / "training"), epochs) if epochs else {}
    return {"task": task, "bug": bug or "clean", "verdicts": verdicts, "preflight_seconds": report.seconds, **noticed}


def broken(task: str, bug: str | None, cache: Path):
    """The task's tiny run, with `bug` injected."""
    built = build(task, cache, "callbacks.health_monitor.stop_on_alert=true")
    if bug in MODULE_BUGS:
        MODULE_BUGS[bug](built.module, task)
    elif bug in DATA_BUGS:
        DATA_BUGS[bug](built.datamodule, task)
    return built


def verdict_of(check: preflight.CheckResult) -> str:
    """A check's verdict, with its number."""
    return check.verdict if check.value is None else f"{check.verdict} {check.value:.3g}"


def train_without_preflight(built, epochs: int) -> dict:
    """Audit, then fit for `epochs` epochs with the health monitors stopping on alert: what stopped it, when."""
    report = built.datamodule.audit(built.module.masking)
    if report.errors:
        return {"noticed_by": "audit", "noticed_at_step": 0, "steps": 0, "monitor": None}
    with_health = build_health_monitor()
    trainer = pl.Trainer(
        default_root_dir=built.trainer.default_root_dir,
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[with_health],
    )
    try:
        trainer.fit(built.module, datamodule=built.datamodule)
    except VigilError as error:
        return {
            "noticed_by": type(error).__name__,
            "noticed_at_step": trainer.global_step,
            "steps": trainer.global_step,
            "monitor": None,
        }
    metrics = trainer.validate(built.module, datamodule=built.datamodule, verbose=False)[0]
    monitor = {"segmentation": "val/dice", "contrastive": "val/rsum", "cape": "val/pck", "vqa": "val/acc"}
    name = monitor[built.task]
    return {
        "noticed_by": None,
        "noticed_at_step": None,
        "steps": trainer.global_step,
        "monitor": name,
        "monitor_value": float(metrics[name]),
        "health_alerts": len(with_health.alerts_raised),
    }


def build_health_monitor():
    """The default health monitor (conf/callbacks/health.yaml), stopping on its first alert."""
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["callbacks.health_monitor.stop_on_alert=true"])
    return instantiate(cfg.callbacks.health_monitor)


def table(results: list[dict]) -> str:
    """The README's table: one row per task and bug."""
    lines = [
        "| task | bug | gradients | independence | init_loss | blind_baseline | leakage | without preflight |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results:
        v = row["verdicts"]
        if "steps" not in row:
            after = "not trained"
        elif row["noticed_by"]:
            after = f"stopped by {row['noticed_by']} at step {row['noticed_at_step']}"
        else:
            after = f"trained all {row['steps']} steps unnoticed, {row['monitor']} {row['monitor_value']:.3f}"
        cells = [v.get(name, "-") for name in ("gradients", "independence", "init_loss", "blind_baseline", "leakage")]
        lines.append(f"| {row['task']} | {row['bug']} | " + " | ".join(cells) + f" | {after} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
