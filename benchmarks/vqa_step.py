"""VQA training step: logits at the positions that predict a supervised token only, vs logits at every position.

Both train the embedded default's model (the tiny FastVLM-style checkpoint, as `conf/` configures it) with the
token cross-entropy and AdamW on the same batches of the embedded data, read by the real loader. A batch of 32
sequences has about 4,500 positions and about 130 supervised tokens; the full side computes a vocabulary-sized row
at every prompt and image token, which the loss never reads. With the default's 1,024-token vocabulary that head
is a small share of the step (the ratio is near 1); the saving is in memory and compute of large vocabularies
(Qwen2-VL's 151,646 tokens: a batch of 8 x 768 positions has 3.7 GB of float32 logits). The rounds alternate so
that machine noise hits both alike; both sides' losses on the first batch are compared untimed (goal: equal).
"""

from __future__ import annotations

import copy
import tempfile
import time
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from benchmarks.common import Row, median, spread
from vigil.tasks.vqa.losses import TokenCrossEntropy, predicting_positions
from vigil.tasks.vqa.masking import supervised_labels
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


def step_loss(model: Any, masking: Any, batch: Any, only_predicting: bool) -> torch.Tensor:
    """The token loss of one batch, from the predicting positions' logits or from every position's."""
    labels = supervised_labels(masking, batch.input_ids, batch.token_role)
    kept = predicting_positions(labels) if only_predicting else None
    logits = model(batch.input_ids, batch.attention_mask, batch.pixel_values, logits_at=kept)
    return TokenCrossEntropy()(logits, labels)


def round_seconds(model: Any, masking: Any, batches: list[Any], only_predicting: bool, args: Any) -> float:
    """Median seconds of a training step (forward, backward, AdamW) over one round."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    seconds = []
    for index in range(args.warmup + args.steps):
        batch = batches[index % len(batches)]
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        step_loss(model, masking, batch, only_predicting).backward()
        optimizer.step()
        if index >= args.warmup:
            seconds.append(time.perf_counter() - start)
    return median(seconds)


def vqa_step(args: Any) -> list[Row]:
    """Median step seconds of each side over alternated rounds, their ratio, and the loss difference."""
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as cache:
        model, masking, batches = default_setup(cache)
    with torch.no_grad():
        difference = abs(
            step_loss(model, masking, batches[0], True).item() - step_loss(model, masking, batches[0], False).item()
        )
    sides: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for only_predicting in (True, False):
            copied = copy.deepcopy(model).train()
            sides[only_predicting].append(round_seconds(copied, masking, batches, only_predicting, args))
    ours, full = median(sides[True]), median(sides[False])
    labels = [supervised_labels(masking, batch.input_ids, batch.token_role) for batch in batches]
    kept = sum(int(predicting_positions(label).sum()) for label in labels) / sum(label.numel() for label in labels)
    return [
        Row(NAME, "logit_positions_kept", kept, "fraction", note="of every position of the batches"),
        Row(NAME, "step_s_predicting_positions", ours, "s", note=spread(sides[True]), samples=sides[True]),
        Row(NAME, "step_s_every_position", full, "s", note=spread(sides[False]), samples=sides[False]),
        Row(NAME, "every_position_over_predicting", full / ours, "x", goal=">= 1"),
        Row(NAME, "loss_difference", difference, "", goal="< 1e-5"),
    ]
