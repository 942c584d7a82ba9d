"""Contrastive losses against references computed by hand and with plain loops, under both masking strategies."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vigil.tasks.contrastive.losses import InfoNCE, SigLIP
from vigil.tasks.contrastive.masking import DiagonalMasking, SameImageMasking


def log_sum_exp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def loop_infonce(logits: list[list[float]], positives: list[list[bool]]) -> float:
    """ALBEF's multi-positive cross-entropy, both ways, written with loops over plain lists."""

    def direction(rows: list[list[float]], marks: list[list[bool]]) -> float:
        losses = []
        for row, mark in zip(rows, marks, strict=True):
            count = sum(mark)
            if count:
                normaliser = log_sum_exp(row)
                losses.append(-sum((value - normaliser) / count for value, m in zip(row, mark, strict=True) if m))
        return sum(losses) / len(losses)

    transpose = [list(column) for column in zip(*logits, strict=True)]
    transposed_marks = [list(column) for column in zip(*positives, strict=True)]
    return (direction(logits, positives) + direction(transpose, transposed_marks)) / 2


def loop_siglip(logits: list[list[float]], positives: list[list[bool]]) -> float:
    """SigLIP: -sum log sigmoid(label * logit) over every pair, / number of images."""
    total = 0.0
    for row, mark in zip(logits, positives, strict=True):
        for value, m in zip(row, mark, strict=True):
            label = 1.0 if m else -1.0
            total -= math.log(1.0 / (1.0 + math.exp(-label * value)))
    return total / len(logits)


def random_batch(images: int, captions: int, dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image_embeds = F.normalize(torch.randn(images, dim, generator=generator, dtype=torch.float64), dim=1)
    text_embeds = F.normalize(torch.randn(captions, dim, generator=generator, dtype=torch.float64), dim=1)
    return image_embeds, text_embeds


def test_infonce_with_one_positive_per_row_by_hand():
    # Orthonormal embeddings, scale 2: logits [[2, 0], [0, 2]]; each row's loss is -log(e^2 / (e^2 + 1)).
    embeds = torch.eye(2, dtype=torch.float64)
    loss = InfoNCE()(embeds, embeds, torch.eye(2, dtype=torch.bool), torch.tensor(2.0, dtype=torch.float64))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-12)


def test_infonce_spreads_the_target_over_several_positives_by_hand():
    # Image 0 has captions 0 and 1, image 1 has caption 2; at scale 1 the logits are [[1, 0, 0], [0, 0, 1]].
    image_embeds = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    text_embeds = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    positives = SameImageMasking()(torch.tensor([0, 1]), torch.tensor([0, 0, 1]))
    loss = InfoNCE()(image_embeds, text_embeds, positives, torch.tensor(1.0, dtype=torch.float64))
    # image 0: targets 1/2 on captions 0 and 1: -(1/2)(1 - L) - (1/2)(0 - L), L = log(e + 2)
    # image 1: -(1 - L), same L; captions: 0 -> images (1, 0): -(1 - log(e + 1)); 1 -> (0, 0): log 2;
    # 2 -> (0, 1): -(1 - log(e + 1)).
    big = math.log(math.e + 2)
    image_to_text = ((big - 0.5) + (big - 1)) / 2
    text_to_image = (2 * (math.log(math.e + 1) - 1) + math.log(2)) / 3
    assert loss.item() == pytest.approx((image_to_text + text_to_image) / 2, abs=1e-12)


@pytest.mark.parametrize("masking", [SameImageMasking(), DiagonalMasking()], ids=["same_image", "diagonal"])
def test_infonce_matches_the_loop_reference(masking):
    image_embeds, text_embeds = random_batch(6, 6)
    ids = torch.tensor([3, 3, 7, 1, 7, 7])
    positives = masking(ids, ids)
    scale = torch.tensor(5.0, dtype=torch.float64)
    logits = (scale * image_embeds @ text_embeds.T).tolist()
    loss = InfoNCE()(image_embeds, text_embeds, positives, scale)
    assert loss.item() == pytest.approx(loop_infonce(logits, positives.tolist()), abs=1e-10)


def test_infonce_on_distinct_images_is_the_clip_loss():
    image_embeds, text_embeds = random_batch(5, 5)
    ids = torch.arange(5) * 10
    scale = torch.tensor(14.3, dtype=torch.float64)
    logits = scale * image_embeds @ text_embeds.T
    clip = (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5))) / 2
    same_image = InfoNCE()(image_embeds, text_embeds, SameImageMasking()(ids, ids), scale)
    diagonal = InfoNCE()(image_embeds, text_embeds, DiagonalMasking()(ids, ids), scale)
    assert same_image.item() == pytest.approx(clip.item(), abs=1e-12)
    assert diagonal.item() == pytest.approx(clip.item(), abs=1e-12)


def test_infonce_on_an_evaluation_batch_of_images_and_all_their_captions():
    image_embeds, text_embeds = random_batch(3, 7)
    positives = SameImageMasking()(torch.tensor([4, 5, 6]), torch.tensor([4, 4, 5, 5, 5, 6, 6]))
    scale = torch.tensor(3.0, dtype=torch.float64)
    logits = (scale * image_embeds @ text_embeds.T).tolist()
    loss = InfoNCE()(image_embeds, text_embeds, positives, scale)
    assert loss.item() == pytest.approx(loop_infonce(logits, positives.tolist()), abs=1e-10)


def test_infonce_leaves_out_rows_without_a_positive():
    image_embeds, text_embeds = random_batch(3, 3)
    positives = SameImageMasking()(torch.tensor([0, 1, 9]), torch.tensor([0, 1, 2]))
    scale = torch.tensor(2.0, dtype=torch.float64)
    logits = (scale * image_embeds @ text_embeds.T).tolist()
    loss = InfoNCE()(image_embeds, text_embeds, positives, scale)
    assert loss.item() == pytest.approx(loop_infonce(logits, positives.tolist()), abs=1e-10)


@pytest.mark.parametrize("masking", [SameImageMasking(), DiagonalMasking()], ids=["same_image", "diagonal"])
def test_siglip_matches_the_loop_reference(masking):
    image_embeds, text_embeds = random_batch(6, 6, seed=1)
    ids = torch.tensor([0, 0, 2, 2, 2, 5])
    positives = masking(ids, ids)
    loss_fn = SigLIP(bias_init=-3.0).double()
    scale = torch.tensor(10.0, dtype=torch.float64)
    logits = (scale * image_embeds @ text_embeds.T - 3.0).tolist()
    loss = loss_fn(image_embeds, text_embeds, positives, scale)
    assert loss.item() == pytest.approx(loop_siglip(logits, positives.tolist()), abs=1e-10)


def test_siglip_bias_starts_at_minus_ten_and_learns():
    loss_fn = SigLIP()
    assert loss_fn.logit_bias.item() == -10.0
    image_embeds, text_embeds = random_batch(4, 4)
    ids = torch.arange(4)
    loss_fn(image_embeds.float(), text_embeds.float(), SameImageMasking()(ids, ids), torch.tensor(10.0)).backward()
    assert loss_fn.logit_bias.grad is not None and loss_fn.logit_bias.grad.item() != 0
