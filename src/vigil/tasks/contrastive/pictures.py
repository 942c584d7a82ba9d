"""The pictures: for a few captions, images framed green where they are the caption's positive and red where not
(validation: the top retrieved images; preflight: the training batch's images)."""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np

CORRECT, WRONG = "#2ca02c", "#d62728"


def retrieval_grid(captions: list[str], retrieved: list[list[np.ndarray]], correct: list[list[bool]]) -> plt.Figure:
    """One row per caption: its caption, then its retrieved images best first, framed green if correct else red."""
    rows, columns = len(captions), max(len(images) for images in retrieved)
    figure, axes = plt.subplots(rows, columns + 1, figsize=(1.6 * (columns + 1), 1.7 * rows), squeeze=False)
    for row, (caption, images, hits) in enumerate(zip(captions, retrieved, correct, strict=True)):
        axes[row, 0].text(0, 0.5, textwrap.fill(caption, 24), fontsize=7, va="center")
        axes[row, 0].axis("off")
        for column in range(columns):
            axis = axes[row, column + 1]
            axis.set_xticks([])
            axis.set_yticks([])
            if column >= len(images):
                axis.axis("off")
                continue
            axis.imshow(images[column])
            axis.set_title(f"#{column + 1}", fontsize=7)
            for spine in axis.spines.values():
                spine.set_edgecolor(CORRECT if hits[column] else WRONG)
                spine.set_linewidth(3)
    figure.tight_layout()
    return figure
