"""The pictures: a few images with their question, the true answer and the model's, right in green (validation);
the training sequences as the model gets them, the supervised tokens in green (preflight)."""

from __future__ import annotations

import textwrap
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from vigil.tasks.vqa.prompts import Role

CORRECT, WRONG = "#2ca02c", "#d62728"


def answer_grid(
    images: list[np.ndarray], questions: list[str], answers: list[str], predictions: list[str], correct: list[bool]
) -> plt.Figure:
    """One column per sample: the image, then its question, true answer and predicted answer."""
    count = len(images)
    figure, axes = plt.subplots(1, count, figsize=(2.4 * count, 3.4), squeeze=False)
    for axis, image, question, answer, prediction, right in zip(
        axes[0], images, questions, answers, predictions, correct, strict=True
    ):
        axis.imshow(image)
        axis.set_xticks([])
        axis.set_yticks([])
        for spine in axis.spines.values():
            spine.set_edgecolor(CORRECT if right else WRONG)
            spine.set_linewidth(3)
        axis.set_title(textwrap.fill(question, 28), fontsize=7)
        axis.set_xlabel(f"truth: {answer}\nmodel: {prediction}", fontsize=7, color=CORRECT if right else WRONG)
    figure.tight_layout()
    return figure


def token_segments(tokenizer: Any, input_ids: torch.Tensor, roles: torch.Tensor, supervised: torch.Tensor) -> list:
    """A sequence as (text, supervised) runs: padding dropped, the image's tokens as one `<image x N>` run."""
    runs: list[tuple[str, bool]] = []
    key, ids = None, []

    def close() -> None:
        if key is None:
            return
        image, counted = key
        runs.append((f"<image x {len(ids)}>" if image else tokenizer.decode(ids), counted))

    for token, role, counted in zip(input_ids.tolist(), roles.tolist(), supervised.tolist(), strict=True):
        if role == Role.PADDING:
            continue
        if (role == Role.IMAGE, counted) != key:
            close()
            key, ids = (role == Role.IMAGE, counted), []
        ids.append(token)
    close()
    return runs


def sequence_grid(images: list[np.ndarray] | None, sequences: list[list[tuple[str, bool]]]) -> plt.Figure:
    """One row per sequence: its image as the model gets it (when the pixels are per sample), and its text with
    the supervised runs in green and marked with >> <<."""
    rows = len(sequences)
    columns = 1 if images is None else 2
    figure, axes = plt.subplots(rows, columns, figsize=(3 + 6 * columns, 2.2 * rows), squeeze=False)
    for row, runs in enumerate(sequences):
        if images is not None:
            axes[row, 0].imshow(images[row])
        text = "".join(f">>{piece}<<" if counted else piece for piece, counted in runs)
        supervised = " | ".join(piece.strip() for piece, counted in runs if counted) or "(nothing supervised)"
        axis = axes[row, columns - 1]
        axis.text(0, 0.65, textwrap.fill(text, 110), fontsize=6, va="center", family="monospace")
        axis.text(0, 0.1, textwrap.fill(f"supervised: {supervised}", 110), fontsize=7, color=CORRECT, va="center")
        for axis in axes[row]:
            axis.axis("off")
    figure.tight_layout()
    return figure


def unnormalized(pixels: torch.Tensor, image_processor: Any) -> np.ndarray:
    """A processor's 3 x H x W pixel values back to H x W x 3 in [0, 1], with its own mean and std undone."""
    mean = torch.tensor(image_processor.image_mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(image_processor.image_std, dtype=torch.float32).view(3, 1, 1)
    return (pixels.detach().float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
