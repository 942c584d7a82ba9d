"""The pictures: image / ground truth / prediction overlays, one row per sample (the preflight's without the
prediction)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from vigil.core.files import IMAGENET, Normalization, denormalize


def overlay_grid(
    images: torch.Tensor,
    masks: torch.Tensor,
    predictions: torch.Tensor | None,
    annotated: torch.Tensor,
    names: list[str],
    normalization: Normalization = IMAGENET,
) -> plt.Figure:
    """A figure with one row per sample: the image, the ground truth overlay, the predicted overlay (when given)."""
    rows, columns = images.shape[0], 2 if predictions is None else 3
    figure, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2 * rows), squeeze=False)
    for row in range(rows):
        picture = denormalize(images[row].detach().float().cpu(), normalization).permute(1, 2, 0).numpy()
        truth = "ground truth" if annotated[row] else "not annotated"
        panels = [(None, names[row]), (masks[row], truth)]
        if predictions is not None:
            panels.append((predictions[row], "prediction"))
        for column, (labels, title) in enumerate(panels):
            axis = axes[row, column]
            axis.imshow(picture)
            if labels is not None and (column != 1 or annotated[row]):
                shown = np.ma.masked_where(labels.cpu().numpy() == 0, labels.cpu().numpy())
                axis.imshow(shown, alpha=0.5, cmap="autumn", interpolation="nearest")
            axis.set_title(title, fontsize=8)
            axis.axis("off")
    figure.tight_layout()
    return figure
