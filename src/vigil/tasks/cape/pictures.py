"""The pictures: per episode, the support with its keypoints, and the query with true (and predicted) ones; the
preflight's shows the training episodes as the model gets them, without predictions.

Both in the crops the model saw; the skeleton joins the keypoints; a grey line joins each prediction to its truth.
Only keypoints the metric scores (labelled in the query and the supports) are drawn on the query.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np

TRUE, PREDICTED, SUPPORT = "#2ca02c", "#d62728", "#1f77b4"


@dataclass
class EpisodePicture:
    """What one row shows: crops (H x W x 3 uint8), keypoints in crop pixels (K x 2) and which to draw (K)."""

    category: str
    support_image: np.ndarray
    support_keypoints: np.ndarray
    support_labelled: np.ndarray
    query_image: np.ndarray
    true_keypoints: np.ndarray
    predicted_keypoints: np.ndarray | None
    scored: np.ndarray
    skeleton: tuple[tuple[int, int], ...]


def episode_grid(rows: list[EpisodePicture]) -> plt.Figure:
    """One row per episode: the support (its keypoints and skeleton), the query (true in green, predicted in red)."""
    figure, axes = plt.subplots(len(rows), 2, figsize=(5, 2.6 * len(rows)), squeeze=False)
    for row, picture in enumerate(rows):
        support, query = axes[row]
        support.imshow(picture.support_image)
        draw_keypoints(support, picture.support_keypoints, picture.support_labelled, picture.skeleton, SUPPORT)
        support.set_title(f"support: {picture.category}", fontsize=8)
        query.imshow(picture.query_image)
        draw_keypoints(query, picture.true_keypoints, picture.scored, picture.skeleton, TRUE)
        if picture.predicted_keypoints is None:
            query.set_title("query: keypoints the loss counts", fontsize=8)
        else:
            draw_predictions(query, picture)
        for axis in (support, query):
            axis.set_xticks([])
            axis.set_yticks([])
    figure.tight_layout()
    return figure


def draw_predictions(axis: plt.Axes, picture: EpisodePicture) -> None:
    """The predicted keypoints, each joined to its truth by a grey line."""
    for (x0, y0), (x1, y1) in zip(
        picture.true_keypoints[picture.scored], picture.predicted_keypoints[picture.scored], strict=True
    ):
        axis.plot([x0, x1], [y0, y1], color="0.6", linewidth=0.8)
    draw_keypoints(axis, picture.predicted_keypoints, picture.scored, picture.skeleton, PREDICTED)
    axis.set_title("query: true (green), predicted (red)", fontsize=8)


def draw_keypoints(
    axis: plt.Axes, keypoints: np.ndarray, shown: np.ndarray, skeleton: tuple[tuple[int, int], ...], colour: str
) -> None:
    """The shown keypoints as dots, and the skeleton edges whose two ends are both shown."""
    for i, j in skeleton:
        if shown[i] and shown[j]:
            axis.plot(keypoints[[i, j], 0], keypoints[[i, j], 1], color=colour, linewidth=1, alpha=0.7)
    axis.scatter(keypoints[shown, 0], keypoints[shown, 1], s=10, c=colour)
