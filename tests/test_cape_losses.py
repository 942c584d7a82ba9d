"""Masking and losses: unlabelled and padding keypoints neither change the loss nor its gradient; means count only
the supervised keypoints."""

from __future__ import annotations

import math

import pytest
import torch

from vigil.tasks.cape.losses import HeatmapLoss, L1HeatmapLoss, L1KeypointLoss, gaussian_targets
from vigil.tasks.cape.masking import AllKeypointsMasking, VisibleMasking, VisibleOnly2Masking
from vigil.tasks.cape.model import CapeOutput, soft_argmax

# Two episodes, two shots, K padded to 4. Episode 0: keypoint 1 unlabelled in the query, keypoint 2 occluded in one
# shot, keypoint 3 unlabelled in one shot. Episode 1: three real keypoints, the fourth is padding.
QUERY_VISIBILITY = torch.tensor([[2, 0, 2, 1], [2, 1, 2, 0]])
SUPPORT_VISIBILITY = torch.tensor([[[2, 2, 1, 2], [2, 2, 2, 0]], [[2, 2, 2, 0], [1, 2, 2, 0]]])
KEYPOINT_MASK = torch.tensor([[True, True, True, True], [True, True, True, False]])


def weights(masking) -> list[list[float]]:
    return masking(QUERY_VISIBILITY, SUPPORT_VISIBILITY, KEYPOINT_MASK).tolist()


def test_visible_counts_keypoints_labelled_in_the_query_and_every_shot():
    assert weights(VisibleMasking()) == [[1, 0, 1, 0], [1, 1, 1, 0]]


def test_visible_only_2_counts_fully_visible_keypoints_only():
    assert weights(VisibleOnly2Masking()) == [[1, 0, 0, 0], [0, 0, 1, 0]]


def test_all_counts_every_real_keypoint_but_never_padding():
    assert weights(AllKeypointsMasking()) == [[1, 1, 1, 1], [1, 1, 1, 0]]


def test_padding_never_counts_even_when_labelled():
    everything = torch.full((1, 3), 2)
    mask = torch.tensor([[True, False, False]])
    for masking in (VisibleMasking(), VisibleOnly2Masking(), AllKeypointsMasking()):
        assert masking(everything, everything[:, None], mask).tolist() == [[1, 0, 0]]


def output_from(keypoints: torch.Tensor, heatmaps: torch.Tensor) -> CapeOutput:
    return CapeOutput(keypoints=keypoints, heatmaps=heatmaps, initial_keypoints=keypoints)


def predictions(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(2, 4, 2, generator=generator), torch.randn(2, 4, 6, 6, generator=generator)


TARGETS = torch.rand(2, 4, 2, generator=torch.Generator().manual_seed(5))
# The unlabelled query keypoint stored at garbage coordinates, as COCO files store it.
TARGETS[0, 1] = torch.tensor([-3.0, -3.0])
LOSSES = {"l1": L1KeypointLoss(), "heatmap": HeatmapLoss(sigma=1.0), "l1_heatmap": L1HeatmapLoss(1.0, 0.5, 1.0)}


def loss_and_gradients(loss_name: str, masking, keypoints: torch.Tensor, heatmaps: torch.Tensor):
    """The loss, and its gradients with respect to the predicted keypoints and heatmaps (zeros where unused)."""
    keypoints = keypoints.clone().requires_grad_(True)
    heatmaps = heatmaps.clone().requires_grad_(True)
    weight = masking(QUERY_VISIBILITY, SUPPORT_VISIBILITY, KEYPOINT_MASK)
    loss = LOSSES[loss_name](output_from(keypoints, heatmaps), TARGETS, weight)
    keypoint_grad, heatmap_grad = torch.autograd.grad(loss, (keypoints, heatmaps), materialize_grads=True)
    return loss.detach(), keypoint_grad, heatmap_grad


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_unlabelled_keypoint_prediction_changes_neither_loss_nor_gradient_under_visible(loss_name: str):
    keypoints, heatmaps = predictions()
    moved_keypoints, moved_heatmaps = keypoints.clone(), heatmaps.clone()
    # Episode 0, keypoint 1: unlabelled in the query. Move its prediction and its heatmap far away.
    moved_keypoints[0, 1] += torch.tensor([0.7, -0.4])
    moved_heatmaps[0, 1] = 10 * torch.randn(6, 6)
    loss, keypoint_grad, heatmap_grad = loss_and_gradients(loss_name, VisibleMasking(), keypoints, heatmaps)
    moved_loss, moved_keypoint_grad, moved_heatmap_grad = loss_and_gradients(
        loss_name, VisibleMasking(), moved_keypoints, moved_heatmaps
    )
    assert torch.equal(loss, moved_loss)
    assert torch.equal(keypoint_grad, moved_keypoint_grad) and torch.equal(heatmap_grad, moved_heatmap_grad)
    assert keypoint_grad[0, 1].abs().sum() == 0 and heatmap_grad[0, 1].abs().sum() == 0


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_unlabelled_keypoint_prediction_changes_loss_and_gradient_under_all(loss_name: str):
    keypoints, heatmaps = predictions()
    moved_keypoints, moved_heatmaps = keypoints.clone(), heatmaps.clone()
    moved_keypoints[0, 1] += torch.tensor([0.7, -0.4])
    moved_heatmaps[0, 1] = 10 * torch.randn(6, 6)
    loss, keypoint_grad, heatmap_grad = loss_and_gradients(loss_name, AllKeypointsMasking(), keypoints, heatmaps)
    moved_loss, _, _ = loss_and_gradients(loss_name, AllKeypointsMasking(), moved_keypoints, moved_heatmaps)
    assert not torch.equal(loss, moved_loss)
    assert keypoint_grad[0, 1].abs().sum() + heatmap_grad[0, 1].abs().sum() > 0


def test_l1_is_the_mean_over_supervised_keypoints_not_over_all():
    keypoints, heatmaps = predictions()
    weight = VisibleMasking()(QUERY_VISIBILITY, SUPPORT_VISIBILITY, KEYPOINT_MASK)
    loss = L1KeypointLoss()(output_from(keypoints, heatmaps), TARGETS, weight)
    counted = [(0, 0), (0, 2), (1, 0), (1, 1), (1, 2)]
    expected = sum(float((keypoints[b, k] - TARGETS[b, k]).abs().sum()) for b, k in counted) / len(counted)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_nothing_supervised_gives_zero_loss_that_still_backpropagates():
    keypoints, heatmaps = predictions()
    loss, keypoint_grad, heatmap_grad = loss_and_gradients(
        "l1_heatmap", lambda *_: torch.zeros(2, 4), keypoints, heatmaps
    )
    assert loss.item() == 0.0 and keypoint_grad.abs().sum() == 0 and heatmap_grad.abs().sum() == 0


def test_heatmap_target_is_a_normalised_gaussian_centred_on_the_keypoint():
    point = torch.tensor([[[(2 + 0.5) / 6, (3 + 0.5) / 8]]])  # the centre of cell (row 3, column 2) of an 8 x 6 map
    target = gaussian_targets(point, height=8, width=6, sigma=1.0).reshape(8, 6)
    assert target.sum().item() == pytest.approx(1.0)
    assert divmod(int(target.argmax()), 6) == (3, 2)
    rows, columns = torch.meshgrid(torch.arange(8.0), torch.arange(6.0), indexing="ij")
    expected = torch.exp(-((rows - 3) ** 2 + (columns - 2) ** 2) / 2)
    torch.testing.assert_close(target, expected / expected.sum())


def test_heatmap_loss_is_the_kl_divergence_from_the_target():
    keypoints, heatmaps = predictions()
    weight = torch.zeros(2, 4)
    weight[1, 2] = 1
    loss = HeatmapLoss(sigma=1.5)(output_from(keypoints, heatmaps), TARGETS, weight)
    target = gaussian_targets(TARGETS[1:2, 2:3], 6, 6, 1.5).flatten()
    expected = (target * (target.log() - heatmaps[1, 2].flatten().log_softmax(0))).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    perfect = output_from(keypoints, target.log().reshape(1, 1, 6, 6).expand(2, 4, 6, 6))
    assert HeatmapLoss(sigma=1.5)(perfect, TARGETS, weight).item() == pytest.approx(0.0, abs=1e-6)


def test_combined_loss_is_the_weighted_sum():
    keypoints, heatmaps = predictions()
    weight = VisibleMasking()(QUERY_VISIBILITY, SUPPORT_VISIBILITY, KEYPOINT_MASK)
    output = output_from(keypoints, heatmaps)
    combined = L1HeatmapLoss(l1_weight=2.0, heatmap_weight=0.25, sigma=1.0)(output, TARGETS, weight)
    parts = 2.0 * L1KeypointLoss()(output, TARGETS, weight) + 0.25 * HeatmapLoss(1.0)(output, TARGETS, weight)
    assert combined.item() == pytest.approx(parts.item(), rel=1e-6)


def test_soft_argmax_of_a_peaked_map_is_the_peak_cell_centre():
    logits = torch.full((1, 1, 4, 5), -1e4)
    logits[0, 0, 1, 3] = 0.0
    torch.testing.assert_close(soft_argmax(logits), torch.tensor([[[3.5 / 5, 1.5 / 4]]]))
    uniform = soft_argmax(torch.zeros(1, 1, 4, 5))
    torch.testing.assert_close(uniform, torch.tensor([[[0.5, 0.5]]]))
    assert math.isclose(float(uniform.sum()), 1.0, rel_tol=1e-6)
