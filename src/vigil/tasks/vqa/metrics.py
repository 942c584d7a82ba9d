"""Answer accuracy per question type, as a torchmetrics Metric (per-type counts summed across DDP ranks).

Whether one answer is right is `answers.answers_match`. `acc` is the accuracy over all answers (micro),
`acc_macro` the mean of the per-type accuracies of the types that occurred, `acc/<type>` the accuracy of each type
that occurred, and `samples` the number of answers scored (over every rank).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

from vigil.tasks.vqa.answers import answers_match
from vigil.tasks.vqa.question_types import QUESTION_TYPES, check_question_type


class PerTypeAccuracy(Metric):
    """Counts answers and right answers per question type; computes micro, macro and per-type accuracy."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(
        self,
        question_types: Sequence[str] = QUESTION_TYPES,
        abs_tol: float = 0.0,
        rel_tol: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for question_type in question_types:
            check_question_type(question_type)
        if abs_tol < 0 or rel_tol < 0:
            raise ValueError(f"tolerances must be >= 0, got abs_tol={abs_tol}, rel_tol={rel_tol}")
        self.question_types = tuple(question_types)
        self.type_index = {question_type: index for index, question_type in enumerate(self.question_types)}
        self.abs_tol = abs_tol
        self.rel_tol = rel_tol
        zeros = torch.zeros(len(self.question_types), dtype=torch.long)
        self.add_state("correct", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("count", default=zeros.clone(), dist_reduce_fx="sum")
        self.computed_counts = (zeros.clone(), zeros.clone())

    def update(self, predictions: Sequence[str], answers: Sequence[str], question_types: Sequence[str]) -> None:
        """Score a batch: each predicted answer against the true answer, by the rules of its question type."""
        if not len(predictions) == len(answers) == len(question_types):
            raise ValueError(
                f"got {len(predictions)} predictions, {len(answers)} answers and {len(question_types)} question types"
            )
        indices = [self.index_of(question_type) for question_type in question_types]
        hits = [
            answers_match(prediction, answer, question_type, self.abs_tol, self.rel_tol)
            for prediction, answer, question_type in zip(predictions, answers, question_types, strict=True)
        ]
        count, correct = [0] * len(self.question_types), [0] * len(self.question_types)
        for index, hit in zip(indices, hits, strict=True):
            count[index] += 1
            correct[index] += hit
        self.count += torch.tensor(count, device=self.device)
        self.correct += torch.tensor(correct, device=self.device)

    def compute(self) -> dict[str, torch.Tensor]:
        """`acc` (micro), `acc_macro` and `acc/<type>` over the types that occurred, and `samples`, the answers
        scored; empty before any answer."""
        self.computed_counts = (self.count.clone(), self.correct.clone())
        seen = self.count > 0
        if not seen.any():
            return {}
        per_type = self.correct[seen].double() / self.count[seen]
        results = {"acc": self.correct.sum().double() / self.count.sum(), "acc_macro": per_type.mean()}
        names = [name for name, present in zip(self.question_types, seen.tolist(), strict=True) if present]
        results.update({f"acc/{name}": accuracy for name, accuracy in zip(names, per_type, strict=True)})
        results["samples"] = self.count.sum()
        return {name: value.float() for name, value in results.items()}

    def table(self) -> list[tuple[str, int, int, float]]:
        """(type, count, correct, accuracy) for each type that occurred, from the counts `compute` saw (all ranks)."""
        # Cached after a compute on every rank; otherwise this compute syncs, so every rank must call it.
        self.compute()
        count, correct = self.computed_counts
        return [
            (name, int(n), int(right), int(right) / int(n))
            for name, n, right in zip(self.question_types, count.tolist(), correct.tolist(), strict=True)
            if n > 0
        ]

    def index_of(self, question_type: str) -> int:
        """The state row of a question type; a type this metric was not built for is an error naming it."""
        if question_type not in self.type_index:
            raise ValueError(f"unknown question type {question_type!r}; expected one of {self.question_types}")
        return self.type_index[question_type]
