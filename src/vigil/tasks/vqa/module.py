"""The VQA LightningModule: vision-language model, label masking, token loss, decoding and per-type accuracy wired.

Training minimises the token cross-entropy of the supervised labels (the masking's choice of roles). Validation
and test ask every turn of their split, decode the answers (`decoding.py`) and score them per question type; the
majority answer of each type in the training split is scored beside them (`acc_majority`), so every run reports
the baseline it has to beat. At test end the per-type table is printed, every prediction is written to
`predictions.jsonl` in the run directory (gathered from every rank), and logged as a wandb table when wandb logs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pytorch_lightning.loggers import WandbLogger
from torch import nn

from vigil.core.guardrails import check_finite_loss
from vigil.core.module import TaskModule
from vigil.core.pictures import publish_figure
from vigil.tasks.vqa.data import VQABatch, open_image
from vigil.tasks.vqa.decoding import Decoder, DecodingName
from vigil.tasks.vqa.health import supervised_token_stats, supervision_alerts
from vigil.tasks.vqa.masking import Masking
from vigil.tasks.vqa.metrics import PerTypeAccuracy, answers_match
from vigil.tasks.vqa.model import VisionLanguageModel
from vigil.tasks.vqa.pictures import answer_grid

log = logging.getLogger(__name__)
PREDICTIONS_FILE = "predictions.jsonl"
SPLITS = ("val", "test")


class VQAModule(TaskModule):
    """Fine-tunes a vision-language model on the supervised answer tokens; evaluates answers per question type."""

    task_name = "vqa"

    def __init__(
        self,
        model: VisionLanguageModel,
        loss: nn.Module,
        masking: Masking,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        decoding: DecodingName = "constrained",
        max_new_tokens: int = 8,
        abs_tol: float = 0.0,
        rel_tol: float = 0.0,
        pictures: int = 4,
    ) -> None:
        super().__init__(model, loss, masking, optimizer, scheduler)
        self.decoder = Decoder(decoding, max_new_tokens)
        self.abs_tol = abs_tol
        self.rel_tol = rel_tol
        self.pictures = pictures
        self.metrics = nn.ModuleDict({split: PerTypeAccuracy(abs_tol=abs_tol, rel_tol=rel_tol) for split in SPLITS})
        self.baselines = nn.ModuleDict({split: PerTypeAccuracy(abs_tol=abs_tol, rel_tol=rel_tol) for split in SPLITS})
        self.majority: dict[str, str] = {}
        self.predictions: list[dict[str, Any]] = []
        self.picture_samples: list[dict[str, Any]] = []
        # With a frozen base (LoRA, frozen tower) checkpoints hold the trained parameters only; the base weights
        # are the model checkpoint's own files.
        self.frozen = {name for name, parameter in self.named_parameters() if not parameter.requires_grad}
        self.strict_loading = not self.frozen

    def setup(self, stage: str) -> None:
        """The majority answers of the training split, for the baseline."""
        catalog = getattr(self.trainer.datamodule, "catalog", None)
        if catalog is not None:
            self.majority = dict(catalog.majority)

    def forward_batch(self, batch: VQABatch) -> torch.Tensor:
        """Next-token logits of the batch's input fields, passed by name."""
        return self.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            pixel_values=batch.pixel_values,
            image_grid_thw=batch.image_grid_thw,
        )

    def training_step(self, batch: VQABatch, batch_idx: int) -> dict[str, torch.Tensor]:
        labels = self.masking.labels(batch.input_ids, batch.token_role)
        loss = self.loss(self.forward_batch(batch), labels)
        check_finite_loss(loss.detach(), self.global_step, self.current_epoch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch))
        return {"loss": loss}

    def validation_step(self, batch: VQABatch, batch_idx: int) -> None:
        predictions = self._evaluate(batch, "val")
        if batch_idx == 0 and self.pictures:
            # One question per image: the first batch asks several questions about each of its images.
            first_of_image: dict[str, dict[str, Any]] = {}
            for row in self._rows(batch, predictions):
                first_of_image.setdefault(row["image"], row)
            self.picture_samples = list(first_of_image.values())[: self.pictures]

    def test_step(self, batch: VQABatch, batch_idx: int) -> None:
        self.predictions += self._rows(batch, self._evaluate(batch, "test"))

    def _evaluate(self, batch: VQABatch, split: str) -> list[str]:
        predictions = self.decoder(self.model, batch)
        self.metrics[split].update(predictions, batch.answer, batch.question_type)
        self.baselines[split].update(self._majority_answers(batch), batch.answer, batch.question_type)
        return predictions

    def _majority_answers(self, batch: VQABatch) -> list[str]:
        return [self.majority.get(question_type, "") for question_type in batch.question_type]

    def _rows(self, batch: VQABatch, predictions: list[str]) -> list[dict[str, Any]]:
        majority = self._majority_answers(batch)
        return [
            {
                "id": batch.id[i],
                "image": batch.image[i],
                "question_type": batch.question_type[i],
                "question": batch.question[i],
                "answer": batch.answer[i],
                "prediction": predictions[i],
                "correct": answers_match(
                    predictions[i], batch.answer[i], batch.question_type[i], self.abs_tol, self.rel_tol
                ),
                "majority_answer": majority[i],
            }
            for i in range(len(batch))
        ]

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")
        if self.picture_samples and not self.trainer.sanity_checking and self.trainer.is_global_zero:
            self._draw_pictures()
        self.picture_samples = []

    def on_test_epoch_end(self) -> None:
        table = self._log_metrics("test")
        rows = sorted(gather_objects(self.predictions), key=lambda row: row["id"])
        self.predictions = []
        if not self.trainer.is_global_zero:
            return
        print(render_table(table), flush=True)
        write_predictions(Path(self.trainer.default_root_dir) / PREDICTIONS_FILE, rows)
        log_wandb_tables(self.trainer.loggers, table, rows)

    def _log_metrics(self, split: str) -> list[tuple[str, int, int, float, float]]:
        """Log the split's accuracies and the majority baseline's; return the per-type table of both."""
        metric, baseline = self.metrics[split], self.baselines[split]
        values = {f"{split}/{name}": value for name, value in metric.compute().items()}
        majority = baseline.compute()
        values |= {f"{split}/{name.replace('acc', 'acc_majority', 1)}": value for name, value in majority.items()}
        # Already synced by torchmetrics; sync_dist only averages identical values (and quiets Lightning).
        if values:
            self.log_dict(values, sync_dist=True)
        baseline_accuracy = {row[0]: row[3] for row in baseline.table()}
        table = [(*row, baseline_accuracy[row[0]]) for row in metric.table()]
        metric.reset()
        baseline.reset()
        return table

    def _draw_pictures(self) -> None:
        samples = self.picture_samples
        figure = answer_grid(
            [np.asarray(open_image(Path(sample["image"]))) for sample in samples],
            [sample["question"] for sample in samples],
            [sample["answer"] for sample in samples],
            [sample["prediction"] for sample in samples],
            [sample["correct"] for sample in samples],
        )
        publish_figure(self.trainer, figure, "val_answers")

    def health_stats(self, outputs: dict[str, torch.Tensor], batch: VQABatch) -> dict[str, float]:
        """Supervised tokens of the batch (those the shifted loss sees) and their share of its real tokens."""
        return supervised_token_stats(self.masking(batch.token_role)[:, 1:], batch.attention_mask)

    def health_alerts(self, stats: dict[str, float], thresholds: dict[str, float]) -> dict[str, str]:
        """A batch that trains on no token, judged with `conf/callbacks/health.yaml` (`vqa:`)."""
        return supervision_alerts(stats, **thresholds)

    def configure_optimizers(self) -> Any:
        """As for every task, but the scheduler steps with every optimizer step: warm-up is counted in steps."""
        configuration = super().configure_optimizers()
        if isinstance(configuration, dict):
            configuration["lr_scheduler"]["interval"] = "step"
        return configuration

    def parameter_groups(self) -> list[torch.nn.Parameter]:
        """The trainable parameters only (LoRA adapters, or everything not frozen)."""
        return [parameter for parameter in self.parameters() if parameter.requires_grad]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Drop the frozen parameters from the checkpoint: they are reloaded from the model's own files."""
        if self.frozen:
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in self.frozen}


def gather_objects(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rank's rows, on every rank (the rows themselves outside DDP)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return rows
    parts: list[list[dict[str, Any]] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, rows)
    return [row for part in parts for row in part]


def render_table(table: list[tuple[str, int, int, float, float]]) -> str:
    """The per-type test table: type, count, correct, accuracy, and the majority answer's accuracy."""
    lines = [f"{'type':<14} {'count':>6} {'correct':>8} {'accuracy':>9} {'majority':>9}"]
    lines += [f"{name:<14} {n:>6} {right:>8} {acc:>9.1%} {base:>9.1%}" for name, n, right, acc, base in table]
    total, correct = sum(row[1] for row in table), sum(row[2] for row in table)
    baseline = sum(row[1] * row[4] for row in table)
    if total:
        lines.append(f"{'all (micro)':<14} {total:>6} {correct:>8} {correct / total:>9.1%} {baseline / total:>9.1%}")
    return "\n".join(lines)


def write_predictions(path: Path, rows: list[dict[str, Any]]) -> None:
    """One JSON line per asked question: the question, the true and predicted answers, and whether it is right."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    log.info("wrote %d predictions to %s", len(rows), path)


def log_wandb_tables(loggers: list[Any], table: list[tuple[str, int, int, float, float]], rows: list[dict]) -> None:
    """The per-type table and every prediction as wandb tables, when a WandbLogger is present."""
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        logger.log_table(
            key="test/accuracy_by_type",
            columns=["type", "count", "correct", "accuracy", "majority_accuracy"],
            data=[list(row) for row in table],
        )
        columns = list(rows[0]) if rows else []
        logger.log_table(key="test/predictions", columns=columns, data=[[row[c] for c in columns] for row in rows])
