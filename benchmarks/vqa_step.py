"""VQA training step: logits at the positions that predict a supervised token only, vs logits at every position.

Both train the embedded default's model (the tiny FastVLM-style checkpoint, as `conf/` configures it) with the
token cross-entropy and AdamW on the same batches of the embedded data, read by the real loader; one side through
`VQAModule.training_loss` itself, the other from the full logits. A batch of 32 sequences has about 4,500
positions and about 130 supervised tokens; the full side computes a vocabulary-sized row at every prompt and image
token, which the loss never reads. With the default's 1,024-token vocabulary that head is a small share of the
step (the ratio is near 1); the saving is in memory and compute of large vocabularies (Qwen2-VL's 151,646 tokens: a
batch of 8 x 768 positions has 3.7 GB of float32 logits). The rounds alternate so that machine noise hits both
alike; both sides' losses on the first batch are compared untimed (goal: equal).
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from benchmarks.common import Row, median, spread
from vigil.tasks.vqa.losses import TokenCrossEntropy, predicting_positions
from vigil.tasks.vqa.masking import supervised_labels
from vigil.tasks.vqa.module import VQAModule
from vigil.train import CONF_DIR

NAME = "vqa_step"
IMAGES = 120


def default_setup(cache: str) -> tuple[Any, Any, list[Any]]:
    """The default's model and masking, and training batches of a small copy of its embedded data."""
    overrides = ["task=vqa", f"paths.cache_dir={cache}", f"data.synthetic.num_images={IMAGES}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        config = compose("train", overrides=overrides)
    data = instantiate(config.data)
    data.prepare_data()
    data.setup("fit")
    dataset, collate = data.dataset("train"), data.collate("train")
    size = config.data.batch_size
    batches = [
        collate([dataset[i] for i in range(start, start + size)]) for start in range(0, len(dataset) - size, size)
    ]
    return instantiate(config.model), instantiate(config.masking), batches


def full_logits_loss(model: Any, masking: Any) -> Callable[[Any], torch.Tensor]:
    """The token loss of a batch from every position's logits (the way before `predicting_positions`)."""

    def loss_of(batch: Any) -> torch.Tensor:
        labels = supervised_labels(masking, batch.input_ids, batch.token_role)
        return TokenCrossEntropy()(model(batch.input_ids, batch.attention_mask, batch.pixel_values), labels)

    return loss_of


def module_loss(model: Any, masking: Any) -> Callable[[Any], torch.Tensor]:
    """The token loss of a batch as `VQAModule.training_loss` computes it in training."""
    module = VQAModule(model, TokenCrossEntropy(), masking, partial(torch.optim.AdamW, lr=1e-3))
    return lambda batch: module.training_loss(batch).loss


def round_seconds(model: Any, loss_of: Callable[[Any], torch.Tensor], batches: list[Any], args: Any) -> float:
    """Median seconds of a training step (forward, backward, AdamW) over one round."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    seconds = []
    for index in range(args.warmup + args.steps):
        batch = batches[index % len(batches)]
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_of(batch).backward()
        optimizer.step()
        if index >= args.warmup:
            seconds.append(time.perf_counter() - start)
    return median(seconds)


def vqa_step(args: Any) -> list[Row]:
    """Median step seconds of each side over alternated rounds, their ratio, and the loss difference."""
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as cache:
        model, masking, batches = default_setup(cache)
    sides = {True: module_loss, False: full_logits_loss}
    with torch.no_grad():
        difference = abs(
            sides[True](model, masking)(batches[0]).item() - sides[False](model, masking)(batches[0]).item()
        )
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for only_predicting, loss in sides.items():
            copied = copy.deepcopy(model).train()
            seconds[only_predicting].append(round_seconds(copied, loss(copied, masking), batches, args))
    ours, full = median(seconds[True]), median(seconds[False])
    labels = [supervised_labels(masking, batch.input_ids, batch.token_role) for batch in batches]
    kept = sum(int(predicting_positions(label).sum()) for label in labels) / sum(label.numel() for label in labels)
    return [
        Row(NAME, "logit_positions_kept", kept, "fraction", note="of every position of the batches"),
        Row(NAME, "step_s_predicting_positions", ours, "s", note=spread(seconds[True]), samples=seconds[True]),
        Row(NAME, "step_s_every_position", full, "s", note=spread(seconds[False]), samples=seconds[False]),
        Row(NAME, "every_position_over_predicting", full / ours, "x", goal=">= 1"),
        Row(NAME, "loss_difference", difference, "", goal="< 1e-5"),
    ]
