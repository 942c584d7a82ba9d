"""The record types of VQA data: what the reader produces, the batch the loaders yield, and what the module reads.

They live apart from the reader (`data.py`) so that the audit (`health.py`), decoding and the module can use them
without importing the reader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vigil.core.batch import Batch, meta, model_input, target
from vigil.core.files import RecordPolicy
from vigil.tasks.vqa.prompts import AnswerFormat, Turn


@dataclass(frozen=True)
class VQARecord:
    """One image and its question-answer turns, and where it was read (`file`, `where`: `line 3`)."""

    id: str
    image: str
    path: Path
    turns: tuple[Turn, ...]
    file: Path
    where: str

    @property
    def record(self) -> str:
        """Where the record was read, for messages: `<file name>:line <n>`."""
        return f"{self.file.name}:{self.where}"


@dataclass
class Catalog:
    """The checked records of every split, the closed types' candidates, and what reading them skipped."""

    source: Path
    splits: dict[str, list[VQARecord]]
    policy: RecordPolicy
    candidates: dict[str, tuple[str, ...]] = field(default_factory=dict)
    majority: dict[str, str] = field(default_factory=dict)
    question_prior: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VQAContext:
    """What the module needs from the data: the most frequent training answer of each question type, and of each
    normalised question text (the two text-only baselines); how the prompt spells an answer (for decoding; None: the
    plain template's); the checkpoint's processor, to draw the preflight's batch as text and pixels."""

    majority_answers: dict[str, str]
    question_prior: dict[str, str] = field(default_factory=dict)
    answer_format: AnswerFormat | None = None
    processor: Any = None


@dataclass
class VQABatch(Batch):
    """Tokenised sequences with their images, the role of every token, and the asked turn's answer.

    Training batches hold whole sequences, padded on the right; evaluation batches hold prompts that end at the
    asked turn's `Answer:`, padded on the left for generation. `image_grid_thw` is Qwen2-VL's patch grid per
    image, None for processors with fixed-size images (LLaVA).
    """

    image_fields = ("pixel_values",)

    input_ids: torch.Tensor = model_input()
    attention_mask: torch.Tensor = model_input()
    pixel_values: torch.Tensor = model_input()
    image_grid_thw: torch.Tensor | None = model_input()
    token_role: torch.Tensor = target()
    answer: list[str] = target()
    question_type: list[str] = target()
    candidates: list[tuple[str, ...]] = target()
    id: list[str] = meta()
    question: list[str] = meta()
    image: list[str] = meta()

    def __len__(self) -> int:
        """The number of sequences."""
        return self.input_ids.shape[0]
