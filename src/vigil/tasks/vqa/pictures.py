"""The validation picture: a few images with their question, the true answer and the model's, right in green."""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np

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
