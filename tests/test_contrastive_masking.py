"""Masking strategies: which pairs of a batch are positives, from the image ids."""

from __future__ import annotations

import pytest
import torch

from vigil.tasks.contrastive.masking import DiagonalMasking, SameImageMasking


def test_same_image_makes_every_caption_of_an_image_a_positive_wherever_it_sits():
    ids = torch.tensor([7, 2, 7, 7])
    expected = torch.tensor(
        [[1, 0, 1, 1], [0, 1, 0, 0], [1, 0, 1, 1], [1, 0, 1, 1]],
        dtype=torch.bool,
    )
    assert torch.equal(SameImageMasking()(ids, ids), expected)


def test_diagonal_keeps_only_the_paired_caption_even_for_the_same_image():
    ids = torch.tensor([7, 7, 2])
    assert torch.equal(DiagonalMasking()(ids, ids), torch.eye(3, dtype=torch.bool))


def test_diagonal_refuses_a_batch_that_is_not_pairs():
    with pytest.raises(ValueError, match="masking=diagonal needs pairs, got 2 images and 5 captions"):
        DiagonalMasking()(torch.tensor([0, 1]), torch.tensor([0, 0, 0, 1, 1]))
