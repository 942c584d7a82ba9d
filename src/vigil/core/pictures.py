"""Pictures a run draws: saved as PNG in the run directory and sent to every image-capable logger."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger


def publish_figure(trainer: pl.Trainer, figure: plt.Figure, name: str, filename: str | None = None) -> Path:
    """Save `figure` as `pictures/<filename>` (by default `<name>_epochNNN.png`) in the run directory and log it as
    `pictures/<name>`; rank zero only."""
    folder = Path(trainer.default_root_dir) / "pictures"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (filename or f"{name}_epoch{trainer.current_epoch:03d}.png")
    figure.savefig(path, dpi=100, bbox_inches="tight")
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=f"pictures/{name}", images=[str(path)], step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(f"pictures/{name}", figure, global_step=trainer.global_step)
    plt.close(figure)
    return path
