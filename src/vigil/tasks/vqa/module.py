"""The VQA LightningModule: vision-language model, label masking, token loss, decoding and per-type accuracy wired.

Training minimises the token cross-entropy of the supervised labels (the masking's choice of roles). Validation
and test ask every turn of their split, decode the answers (`decoding.py`) and score them per question type.
Two text-only baselines are scored beside them, so every run reports what it has to beat: the majority answer of
each type in the training split (`acc_majority`), and the most frequent training answer of the same question
text (`acc_question_prior`; the type's majority for a question never seen in training). `samples` is the number
of questions scored, over every rank. At test end the per-type table is printed, every prediction is written to
`predictions.jsonl` in the run directory (gathered from every rank), and logged as a wandb table when wandb logs.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.distributed as dist
from pytorch_lightning.loggers import WandbLogger
from torch import nn

from vigil.core.files import open_image
from vigil.core.module import LR_SCALE, TaskModule, TrainingLoss
from vigil.core.pictures import publish_figure
from vigil.tasks.vqa.answers import answers_match, normalize_question
from vigil.tasks.vqa.decoding import Decoder, DecodingName
from vigil.tasks.vqa.health import health_alerts, health_stats
from vigil.tasks.vqa.losses import predicting_positions
from vigil.tasks.vqa.masking import VQAMasking, supervised_labels
from vigil.tasks.vqa.metrics import PerTypeAccuracy
from vigil.tasks.vqa.model import VISION_TOWER, VisionLanguageModel
from vigil.tasks.vqa.pictures import answer_grid, sequence_grid, token_segments, unnormalized
from vigil.tasks.vqa.records import VQABatch, VQAContext

log = logging.getLogger(__name__)
PREDICTIONS_FILE = "predictions.jsonl"
# The text-only baselines scored beside the model: the type's majority answer, the question text's.
BASELINES = ("majority", "question_prior")
SPLITS = ("val", "test")
# type, count, correct, accuracy, then each baseline's accuracy.
TableRow = tuple[str, int, int, float, float, float]


class VQAModule(TaskModule):
    """Fine-tunes a vision-language model on the supervised answer tokens; evaluates answers per question type.

    `vision_tower_lr_scale`: the vision tower's learning rate as a factor of the configured one (LLaVA-OneVision
    trains its tower at a fifth of the language model's rate); the schedule moves both.
    """

    task_name = "vqa"
    alert_rule = staticmethod(health_alerts)

    def __init__(
        self,
        model: VisionLanguageModel,
        loss: nn.Module,
        masking: VQAMasking,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        decoding: DecodingName = "constrained",
        max_new_tokens: int = 8,
        abs_tol: float = 0.0,
        rel_tol: float = 0.0,
        pictures: int = 4,
        vision_tower_lr_scale: float = 1.0,
    ) -> None:
        super().__init__(model, loss, masking, optimizer, scheduler)
        self.decoder = Decoder(decoding, max_new_tokens)
        self.abs_tol = abs_tol
        self.rel_tol = rel_tol
        self.pictures = pictures
        self.vision_tower_lr_scale = vision_tower_lr_scale
        self.metrics = nn.ModuleDict({split: PerTypeAccuracy(abs_tol=abs_tol, rel_tol=rel_tol) for split in SPLITS})
        self.baselines = nn.ModuleDict(
            {
                split: nn.ModuleDict({name: PerTypeAccuracy(abs_tol=abs_tol, rel_tol=rel_tol) for name in BASELINES})
                for split in SPLITS
            }
        )
        self.majority: dict[str, str] = {}
        self.question_prior: dict[str, str] = {}
        self.predictions: list[dict[str, Any]] = []
        self.processor: Any = None
        self.picture_samples: list[dict[str, Any]] = []
        # With a frozen base (LoRA, frozen tower) checkpoints hold the trained parameters only; the base weights
        # are the model checkpoint's own files.
        self.frozen = {name for name, parameter in self.named_parameters() if not parameter.requires_grad}
        self.strict_loading = not self.frozen

    def use_context(self, context: VQAContext) -> None:
        """The training split's majority answers per type and per question text, for the baselines; how the prompt
        spells answers, for decoding."""
        self.majority = dict(context.majority_answers)
        self.question_prior = dict(context.question_prior)
        self.decoder.answer_format = context.answer_format
        self.processor = context.processor

    def training_loss(self, batch: VQABatch) -> TrainingLoss:
        """Token cross-entropy of the labels the masking supervises, from the logits of the positions that predict
        them (the model computes no others)."""
        labels = supervised_labels(self.masking, batch.input_ids, batch.token_role)
        logits = self.model(**batch.model_inputs(), logits_at=predicting_positions(labels))
        return TrainingLoss(self.loss(logits, labels))

    def evaluate(self, batch: VQABatch, split: str, batch_idx: int) -> None:
        """Decode and score every question of the batch; keep test rows for predictions.jsonl, and the first
        validation batch's questions for the pictures."""
        predictions = self.decoder(self.model, batch)
        self.metrics[split].update(predictions, batch.answer, batch.question_type)
        baselines = self.baselines[split]
        baselines["majority"].update(self.majority_answers(batch), batch.answer, batch.question_type)
        baselines["question_prior"].update(self.question_prior_answers(batch), batch.answer, batch.question_type)
        if split == "test":
            self.predictions += self.rows(batch, predictions)
        elif batch_idx == 0 and self.pictures:
            # One question per image: the first batch asks several questions about each of its images.
            first_of_image: dict[str, dict[str, Any]] = {}
            for row in self.rows(batch, predictions):
                first_of_image.setdefault(row["image"], row)
            self.picture_samples = list(first_of_image.values())[: self.pictures]

    def majority_answers(self, batch: VQABatch) -> list[str]:
        """The baseline's answer to each question: its type's most frequent training answer."""
        return [self.majority.get(question_type, "") for question_type in batch.question_type]

    def question_prior_answers(self, batch: VQABatch) -> list[str]:
        """The text-only baseline's answer: the most frequent training answer of the same question text, else the
        type's majority answer."""
        majority = self.majority_answers(batch)
        return [
            self.question_prior.get(normalize_question(question), fallback)
            for question, fallback in zip(batch.question, majority, strict=True)
        ]

    def rows(self, batch: VQABatch, predictions: list[str]) -> list[dict[str, Any]]:
        """One predictions.jsonl row per question of the batch."""
        majority, prior = self.majority_answers(batch), self.question_prior_answers(batch)
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
                "question_prior_answer": prior[i],
            }
            for i in range(len(batch))
        ]

    def log_metrics(self, split: str) -> None:
        """Log the split's accuracies, answers scored and the baselines' accuracies; at test end also print the
        per-type table and write every prediction (gathered on every rank, written on rank zero)."""
        metric, baselines = self.metrics[split], self.baselines[split]
        values = dict(metric.compute())
        accuracy = {}
        for name in BASELINES:
            scores = {key: value for key, value in baselines[name].compute().items() if key.startswith("acc")}
            values |= {key.replace("acc", f"acc_{name}", 1): value for key, value in scores.items()}
            accuracy[name] = {row[0]: row[3] for row in baselines[name].table()}
            baselines[name].reset()
        self.log_split(split, values)
        table = [(*row, *(accuracy[name][row[0]] for name in BASELINES)) for row in metric.table()]
        metric.reset()
        if split == "test":
            self.publish_predictions(table)

    def publish_predictions(self, table: list[TableRow]) -> None:
        """Print the per-type table, write predictions.jsonl and log both to wandb (the gather on every rank)."""
        rows = sorted(gather_objects(self.predictions), key=lambda row: row["id"])
        self.predictions = []
        if not self.trainer.is_global_zero:
            return
        print(render_table(table), flush=True)
        write_predictions(Path(self.trainer.default_root_dir) / PREDICTIONS_FILE, rows)
        log_wandb_tables(self.trainer.loggers, table, rows)

    def draw_pictures(self) -> None:
        """The first validation batch's images with their question, true and predicted answer."""
        samples, self.picture_samples = self.picture_samples, []
        if not samples:
            return
        figure = answer_grid(
            [np.asarray(open_image(Path(sample["image"]))) for sample in samples],
            [sample["question"] for sample in samples],
            [sample["answer"] for sample in samples],
            [sample["prediction"] for sample in samples],
            [sample["correct"] for sample in samples],
        )
        publish_figure(self.trainer, figure, "val_answers")

    @torch.no_grad()
    def chance_loss(self, batch: VQABatch) -> float:
        """ln(vocabulary): the token cross-entropy of uniform logits."""
        return math.log(self.forward_batch(batch).shape[-1])

    def preflight_figure(self, batch: VQABatch) -> plt.Figure | None:
        """The first training sequences as the model gets them: the pixels with the processor's normalisation
        undone, the text with the tokens the masking supervises highlighted."""
        if self.processor is None:
            return None
        shown = batch.first(self.pictures or 4)
        supervised = self.masking(shown.token_role)
        sequences = [
            token_segments(self.processor.tokenizer, shown.input_ids[i], shown.token_role[i], supervised[i])
            for i in range(len(shown))
        ]
        pixels = shown.pixel_values
        images = None
        if pixels.ndim == 4 and pixels.shape[0] == len(shown):
            images = [unnormalized(pixels[i], self.processor.image_processor) for i in range(len(shown))]
        return sequence_grid(images, sequences)

    def health_stats(self, outputs: dict[str, torch.Tensor], batch: VQABatch) -> dict[str, float]:
        """Supervised tokens of the batch (those the shifted loss sees) and their share of its real tokens."""
        return health_stats(self.masking, batch.token_role, batch.attention_mask)

    def configure_optimizers(self) -> Any:
        """As for every task, but the scheduler steps with every optimizer step: warm-up is counted in steps."""
        configuration = super().configure_optimizers()
        if isinstance(configuration, dict):
            configuration["lr_scheduler"]["interval"] = "step"
        return configuration

    def parameter_groups(self) -> list[torch.nn.Parameter] | list[dict[str, Any]]:
        """The trainable parameters only (LoRA adapters, or everything not frozen); the vision tower's in a group
        of their own when `vision_tower_lr_scale` gives it another learning rate."""
        named = [(name, parameter) for name, parameter in self.named_parameters() if parameter.requires_grad]
        if self.vision_tower_lr_scale == 1.0:
            return [parameter for _, parameter in named]
        tower = [parameter for name, parameter in named if VISION_TOWER.search(name)]
        rest = [parameter for name, parameter in named if not VISION_TOWER.search(name)]
        groups = [{"params": rest}, {"params": tower, LR_SCALE: self.vision_tower_lr_scale}]
        return [group for group in groups if group["params"]]

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


def render_table(table: list[TableRow]) -> str:
    """The per-type test table: type, count, correct, accuracy, and the two baselines' accuracies (the type's
    majority answer, the question text's most frequent answer)."""
    lines = [f"{'type':<14} {'count':>6} {'correct':>8} {'accuracy':>9} {'majority':>9} {'q-prior':>9}"]
    lines += [
        f"{name:<14} {n:>6} {right:>8} {acc:>9.1%} {base:>9.1%} {prior:>9.1%}"
        for name, n, right, acc, base, prior in table
    ]
    total, correct = sum(row[1] for row in table), sum(row[2] for row in table)
    if total:
        base, prior = (sum(row[1] * row[column] for row in table) / total for column in (4, 5))
        lines.append(f"{'all (micro)':<14} {total:>6} {correct:>8} {correct / total:>9.1%} {base:>9.1%} {prior:>9.1%}")
    return "\n".join(lines)


def write_predictions(path: Path, rows: list[dict[str, Any]]) -> None:
    """One JSON line per asked question: the question, the true and predicted answers, and whether it is right."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    log.info("wrote %d predictions to %s", len(rows), path)


def log_wandb_tables(loggers: list[Any], table: list[TableRow], rows: list[dict[str, Any]]) -> None:
    """The per-type table and every prediction as wandb tables, when a WandbLogger is present."""
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        logger.log_table(
            key="test/accuracy_by_type",
            columns=["type", "count", "correct", "accuracy", "majority_accuracy", "question_prior_accuracy"],
            data=[list(row) for row in table],
        )
        columns = list(rows[0]) if rows else []
        logger.log_table(key="test/predictions", columns=columns, data=[[row[c] for c in columns] for row in rows])
