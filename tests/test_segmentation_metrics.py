import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from vigil.tasks.segmentation.metrics import SegmentationOverlap

IGNORE = 255

# --- numpy reference ------------------------------------------------------------------------------


def reference_counts(logits, mask, num_classes, ignore_index=None):
    """Per image, per foreground class: tp, fp, fn (arrays N x K)."""
    logits, mask = logits.numpy(), mask.numpy()
    if num_classes == 1:
        predicted, classes = (logits[:, 0] > 0).astype(int), [1]  # sigmoid(x) > 0.5  <=>  x > 0
    else:
        predicted, classes = logits.argmax(1), range(1, num_classes)
    counted = mask != ignore_index if ignore_index is not None else np.ones(mask.shape, bool)
    tp, fp, fn = (np.zeros((len(mask), len(classes))) for _ in range(3))
    for i in range(len(mask)):
        for k, c in enumerate(classes):
            pred, true = (predicted[i] == c) & counted[i], (mask[i] == c) & counted[i]
            tp[i, k], fp[i, k], fn[i, k] = (pred & true).sum(), (pred & ~true).sum(), (~pred & true).sum()
    return tp, fp, fn


def dice_of(tp, fp, fn):
    denominator = 2 * tp + fp + fn
    return np.where(denominator == 0, 1.0, 2 * tp / np.maximum(denominator, 1))


def iou_of(tp, fp, fn):
    denominator = tp + fp + fn
    return np.where(denominator == 0, 1.0, tp / np.maximum(denominator, 1))


def reference_scores(logits, mask, num_classes, ignore_index=None, class_names=None):
    tp, fp, fn = reference_counts(logits, mask, num_classes, ignore_index)
    scores = {
        "dice": dice_of(tp, fp, fn).mean(1).mean(),
        "iou": iou_of(tp, fp, fn).mean(1).mean(),
        "dice_dataset": dice_of(tp.sum(), fp.sum(), fn.sum()),
        "iou_dataset": iou_of(tp.sum(), fp.sum(), fn.sum()),
    }
    if num_classes > 1:
        for k, name in enumerate(class_names[1:]):
            scores[f"dice/{name}"] = dice_of(tp[:, k].sum(), fp[:, k].sum(), fn[:, k].sum())
            scores[f"iou/{name}"] = iou_of(tp[:, k].sum(), fp[:, k].sum(), fn[:, k].sum())
    return scores


def assert_scores(result, expected, keys=None):
    keys = keys or expected.keys()
    for key in keys:
        assert result[key].item() == pytest.approx(float(expected[key]), abs=1e-6), key


# --- data -----------------------------------------------------------------------------------------


def binary_case(ignore=False, seed=0):
    """Image 0/3: random; image 1: empty truth, empty prediction; image 2: empty truth, one predicted pixel."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 1, 6, 6, generator=generator)
    mask = (torch.rand(4, 6, 6, generator=generator) < 0.4).long()
    mask[1:3] = 0
    logits[1:3] = -3.0
    logits[2, 0, 4, 4] = 3.0
    if ignore:
        mask[0, :2] = IGNORE
        mask[3, :, :1] = IGNORE
    return logits, mask


def multiclass_case(ignore=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 3, 6, 6, generator=generator)
    mask = torch.randint(0, 3, (4, 6, 6), generator=generator)
    mask[1][mask[1] == 2] = 0  # class 2 absent from image 1
    if ignore:
        mask[0, :2] = IGNORE
    return logits, mask


def computed(logits, mask, **kwargs):
    metric = SegmentationOverlap(**kwargs)
    metric.update(logits, mask)
    return metric.compute()


# --- binary ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ignore_index", [None, IGNORE])
def test_binary_per_image_scores_match_reference(ignore_index):
    logits, mask = binary_case(ignore=ignore_index is not None)
    result = computed(logits, mask, ignore_index=ignore_index)
    assert_scores(result, reference_scores(logits, mask, 1, ignore_index), keys=["dice", "iou"])


@pytest.mark.parametrize("ignore_index", [None, IGNORE])
def test_binary_dataset_scores_are_micro_over_summed_counts(ignore_index):
    logits, mask = binary_case(ignore=ignore_index is not None)
    result = computed(logits, mask, ignore_index=ignore_index)
    assert_scores(result, reference_scores(logits, mask, 1, ignore_index), keys=["dice_dataset", "iou_dataset"])


@pytest.mark.parametrize("ignore_index", [None, IGNORE])
def test_empty_truth_and_empty_prediction_scores_one(ignore_index):
    logits, mask = binary_case()
    result = computed(logits[1:2], mask[1:2], ignore_index=ignore_index)
    assert result["dice"].item() == 1.0
    assert result["iou"].item() == 1.0


@pytest.mark.parametrize("ignore_index", [None, IGNORE])
def test_empty_truth_with_a_predicted_pixel_scores_zero(ignore_index):
    logits, mask = binary_case()
    result = computed(logits[2:3], mask[2:3], ignore_index=ignore_index)
    assert result["dice"].item() == 0.0
    assert result["iou"].item() == 0.0


def test_dataset_scores_of_all_empty_truth_and_prediction_are_one():
    logits, mask = binary_case()
    result = computed(logits[1:2], mask[1:2], ignore_index=IGNORE)
    assert result["dice_dataset"].item() == 1.0
    assert result["iou_dataset"].item() == 1.0


def test_binary_ignored_pixels_are_not_counted():
    mask = torch.zeros(1, 4, 4, dtype=torch.long)
    mask[0, 0, :2] = 1
    mask[0, 3, :] = IGNORE
    logits = torch.full((1, 1, 4, 4), -3.0)
    logits[0, 0, 0, :2] = 3.0  # the two true pixels
    logits[0, 0, 3, :] = 3.0  # every ignored pixel predicted foreground
    result = computed(logits, mask, ignore_index=IGNORE)
    assert result["dice"].item() == 1.0
    assert result["dice_dataset"].item() == 1.0


def smp_binary_scores(logits, mask, ignore_index=None):
    predicted = (torch.sigmoid(logits) > 0.5).long()
    target = mask.unsqueeze(1).clone()
    if ignore_index is not None:  # an ignored pixel set to 0 in both only adds a true negative
        ignored = target == ignore_index
        predicted, target = predicted.masked_fill(ignored, 0), target.masked_fill(ignored, 0)
    tp, fp, fn, tn = smp.metrics.get_stats(predicted, target, mode="binary")
    return {
        "dice": smp.metrics.f1_score(tp, fp, fn, tn, reduction="micro-imagewise"),
        "iou": smp.metrics.iou_score(tp, fp, fn, tn, reduction="micro-imagewise"),
        "dice_dataset": smp.metrics.f1_score(tp, fp, fn, tn, reduction="micro"),
        "iou_dataset": smp.metrics.iou_score(tp, fp, fn, tn, reduction="micro"),
    }


@pytest.mark.parametrize("ignore_index", [None, IGNORE])
def test_binary_matches_smp_metrics_called_directly(ignore_index):
    logits, mask = binary_case(ignore=ignore_index is not None)
    result = computed(logits, mask, ignore_index=ignore_index)
    assert_scores(result, smp_binary_scores(logits, mask, ignore_index))


# --- multiclass -----------------------------------------------------------------------------------

NAMES = ["background", "polyp", "instrument"]


@pytest.mark.parametrize("ignore_index", [None, IGNORE])
def test_multiclass_matches_reference(ignore_index):
    logits, mask = multiclass_case(ignore=ignore_index is not None)
    result = computed(logits, mask, num_classes=3, ignore_index=ignore_index, class_names=NAMES)
    assert_scores(result, reference_scores(logits, mask, 3, ignore_index, NAMES))


def test_multiclass_reports_foreground_classes_only():
    logits, mask = multiclass_case()
    result = computed(logits, mask, num_classes=3, class_names=NAMES)
    per_class = {key for key in result if "/" in key}
    assert per_class == {"dice/polyp", "dice/instrument", "iou/polyp", "iou/instrument"}


def test_multiclass_default_class_names():
    logits, mask = multiclass_case()
    result = computed(logits, mask, num_classes=3)
    assert {"dice/class_1", "dice/class_2"} <= set(result)
    assert "dice/class_0" not in result


@pytest.mark.parametrize("ignore_index", [None, IGNORE])
def test_multiclass_matches_smp_metrics_called_directly(ignore_index):
    logits, mask = multiclass_case(ignore=ignore_index is not None)
    result = computed(logits, mask, num_classes=3, ignore_index=ignore_index, class_names=NAMES)
    tp, fp, fn, tn = (
        c[:, 1:]
        for c in smp.metrics.get_stats(
            logits.argmax(1), mask, mode="multiclass", num_classes=3, ignore_index=ignore_index
        )
    )
    expected = {
        "dice": smp.metrics.f1_score(tp, fp, fn, tn, reduction="macro-imagewise"),
        "iou": smp.metrics.iou_score(tp, fp, fn, tn, reduction="macro-imagewise"),
        "dice_dataset": smp.metrics.f1_score(tp, fp, fn, tn, reduction="micro"),
        "iou_dataset": smp.metrics.iou_score(tp, fp, fn, tn, reduction="micro"),
    }
    counts = (tp.sum(0), fp.sum(0), fn.sum(0), tn.sum(0))
    expected["dice/polyp"], expected["dice/instrument"] = smp.metrics.f1_score(*counts)
    expected["iou/polyp"], expected["iou/instrument"] = smp.metrics.iou_score(*counts)
    assert_scores(result, expected)


# --- accumulation and reset -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "num_classes,case,ignore_index",
    [(1, binary_case, None), (1, binary_case, IGNORE), (3, multiclass_case, IGNORE)],
    ids=["binary", "binary-ignore", "multiclass-ignore"],
)
def test_several_updates_equal_one_update_on_everything(num_classes, case, ignore_index):
    logits, mask = case(ignore=ignore_index is not None)
    whole = computed(logits, mask, num_classes=num_classes, ignore_index=ignore_index)
    metric = SegmentationOverlap(num_classes=num_classes, ignore_index=ignore_index)
    for chunk in ([0], [1, 2], [3]):
        metric.update(logits[chunk], mask[chunk])
    parts = metric.compute()
    assert parts.keys() == whole.keys()
    for key in whole:
        assert torch.allclose(parts[key], whole[key]), key


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_reset_forgets_previous_updates():
    logits, mask = binary_case(ignore=True)
    metric = SegmentationOverlap(ignore_index=IGNORE)
    metric.update(logits[:2], mask[:2])
    metric.reset()
    assert metric.compute() == {}
    metric.update(logits[2:], mask[2:])
    fresh = computed(logits[2:], mask[2:], ignore_index=IGNORE)
    result = metric.compute()
    for key in fresh:
        assert torch.equal(result[key], fresh[key]), key


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_compute_without_update_is_empty():
    assert SegmentationOverlap().compute() == {}
