import pytest
import torch

from vigil.tasks.segmentation.losses import CombinedLoss, bce, ce, dice, focal, lovasz, tversky

IGNORE = 255


# --- references, written from the formulas (no smp) -----------------------------------------------


def counted_pixels(mask, ignore_index):
    return torch.ones_like(mask, dtype=torch.bool) if ignore_index is None else mask != ignore_index


def ref_bce(logits, mask, ignore_index=None, pos_weight=1.0):
    keep = counted_pixels(mask, ignore_index)
    x, y = logits[:, 0][keep].double(), mask[keep].double()
    p = torch.sigmoid(x)
    per_pixel = -(pos_weight * y * torch.log(p) + (1 - y) * torch.log(1 - p))
    return per_pixel.sum() / keep.sum()


def ref_ce(logits, mask, ignore_index=None, smooth=0.0):
    keep = counted_pixels(mask, ignore_index)
    probs = torch.softmax(logits.double(), dim=1).permute(0, 2, 3, 1)[keep]  # (P, C)
    labels = mask[keep]
    nll = -torch.log(probs[torch.arange(len(labels)), labels])
    uniform = -torch.log(probs).sum(1) / probs.shape[1]
    return ((1 - smooth) * nll + smooth * uniform).mean()


def class_probs_and_truths(logits, mask, ignore_index):
    """Per class: counted probabilities and 0/1 truths, flattened over the whole batch."""
    keep = counted_pixels(mask, ignore_index)
    logits = logits.double()
    if logits.shape[1] == 1:
        return [(torch.sigmoid(logits[:, 0])[keep], mask[keep].double())]
    probs = torch.softmax(logits, dim=1)
    return [(probs[:, c][keep], (mask[keep] == c).double()) for c in range(logits.shape[1])]


def ref_tversky(logits, mask, ignore_index=None, alpha=0.5, beta=0.5, gamma=1.0, log_loss=False):
    losses = []
    for p, y in class_probs_and_truths(logits, mask, ignore_index):
        tp, fp, fn = (p * y).sum(), (p * (1 - y)).sum(), ((1 - p) * y).sum()
        score = tp / (tp + alpha * fp + beta * fn)
        loss = -torch.log(score) if log_loss else 1 - score
        losses.append(loss if y.sum() > 0 else torch.zeros((), dtype=torch.float64))
    return torch.stack(losses).mean() ** gamma


def ref_dice(logits, mask, ignore_index=None, log_loss=False):
    losses = []
    for p, y in class_probs_and_truths(logits, mask, ignore_index):
        score = 2 * (p * y).sum() / (p.sum() + y.sum())
        loss = -torch.log(score) if log_loss else 1 - score
        losses.append(loss if y.sum() > 0 else torch.zeros((), dtype=torch.float64))
    return torch.stack(losses).mean()


def sigmoid_focal(x, y, gamma, alpha):
    p = torch.sigmoid(x)
    pt = y * p + (1 - y) * (1 - p)
    weight = 1.0 if alpha is None else alpha * y + (1 - alpha) * (1 - y)
    return (-weight * (1 - pt) ** gamma * torch.log(pt)).mean()


def ref_focal(logits, mask, ignore_index=None, gamma=2.0, alpha=None):
    # smp's focal: sigmoid focal per channel (one-vs-rest for multiclass), mean over counted pixels, mean over classes.
    keep = counted_pixels(mask, ignore_index)
    logits = logits.double()
    if logits.shape[1] == 1:
        return sigmoid_focal(logits[:, 0][keep], mask[keep].double(), gamma, alpha)
    per_class = [
        sigmoid_focal(logits[:, c][keep], (mask[keep] == c).double(), gamma, alpha) for c in range(logits.shape[1])
    ]
    return torch.stack(per_class).mean()


def jaccard_loss(truth, wrong):
    """Jaccard loss of a prediction that gets the pixels in `wrong` wrong and the others right."""
    intersection = (truth & ~wrong).sum()
    union = (truth | wrong).sum()
    return 0.0 if union == 0 else 1.0 - float(intersection) / float(union)


def lovasz_extension(errors, truth):
    """The Lovasz extension of the Jaccard loss at non-negative `errors` (Berman et al. 2018, eq. 8-9)."""
    order = torch.argsort(errors, descending=True)
    wrong = torch.zeros_like(truth)
    total, previous = 0.0, 0.0
    for index in order.tolist():
        wrong[index] = True
        current = jaccard_loss(truth, wrong)
        total += float(errors[index]) * (current - previous)
        previous = current
    return total


def ref_lovasz(logits, mask, ignore_index=None, per_image=False):
    if per_image:
        return sum(ref_lovasz(logits[i : i + 1], mask[i : i + 1], ignore_index) for i in range(len(mask))) / len(mask)
    keep = counted_pixels(mask, ignore_index)
    logits = logits.double()
    if logits.shape[1] == 1:
        truth = mask[keep] == 1
        signs = truth.double() * 2 - 1
        return lovasz_extension(torch.relu(1 - logits[:, 0][keep] * signs), truth)
    probs = torch.softmax(logits, dim=1)
    labels = mask[keep]
    losses = [
        lovasz_extension(((labels == c).double() - probs[:, c][keep]).abs(), labels == c)
        for c in range(logits.shape[1])
        if (labels == c).any()
    ]
    return sum(losses) / len(losses)


# --- data -----------------------------------------------------------------------------------------


def binary_case(seed=0, ignore=False):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 1, 5, 5, generator=generator) * 2
    mask = (torch.rand(2, 5, 5, generator=generator) < 0.4).long()
    if ignore:
        mask[0, :2] = IGNORE
        mask[1, :, 0] = IGNORE
    return logits, mask


def multiclass_case(seed=0, ignore=False):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 5, 5, generator=generator) * 2
    mask = torch.randint(0, 3, (2, 5, 5), generator=generator)
    if ignore:
        mask[0, :2] = IGNORE
        mask[1, :, 0] = IGNORE
    return logits, mask


def close(value, reference):
    return torch.allclose(value.double(), torch.as_tensor(reference, dtype=torch.float64), rtol=1e-5, atol=1e-6)


# --- each loss against its reference --------------------------------------------------------------


def test_bce_is_mean_binary_cross_entropy():
    logits, mask = binary_case()
    assert close(bce(1)(logits, mask), ref_bce(logits, mask))


def test_bce_pos_weight_weighs_foreground_term():
    logits, mask = binary_case()
    assert close(bce(1, pos_weight=3.0)(logits, mask), ref_bce(logits, mask, pos_weight=3.0))


def test_bce_with_ignore_index_divides_by_counted_pixels_only():
    logits, mask = binary_case(ignore=True)
    loss = bce(1, ignore_index=IGNORE)(logits, mask)
    assert close(loss, ref_bce(logits, mask, IGNORE))
    zeroed_mean = ref_bce(logits, mask, IGNORE) * (mask != IGNORE).sum() / mask.numel()
    assert not close(loss, zeroed_mean)


def test_bce_refuses_multiclass():
    with pytest.raises(ValueError, match="num_classes=3"):
        bce(3)


def test_ce_refuses_binary():
    with pytest.raises(ValueError, match="multiclass"):
        ce(1)


def test_ce_is_mean_softmax_cross_entropy():
    logits, mask = multiclass_case()
    assert close(ce(3, smooth_factor=0.0)(logits, mask), ref_ce(logits, mask))


def test_ce_label_smoothing_mixes_in_uniform_target():
    logits, mask = multiclass_case()
    assert close(ce(3, smooth_factor=0.1)(logits, mask), ref_ce(logits, mask, smooth=0.1))


def test_ce_default_smooth_factor_is_plain_cross_entropy():
    logits, mask = multiclass_case()
    assert close(ce(3)(logits, mask), ref_ce(logits, mask))


def test_ce_with_ignore_index_divides_by_counted_pixels_only():
    logits, mask = multiclass_case(ignore=True)
    assert close(ce(3, ignore_index=IGNORE, smooth_factor=0.0)(logits, mask), ref_ce(logits, mask, IGNORE))


@pytest.mark.parametrize("case", [binary_case, multiclass_case], ids=["binary", "multiclass"])
def test_dice_is_soft_dice_pooled_over_batch(case):
    logits, mask = case()
    num_classes = 1 if logits.shape[1] == 1 else logits.shape[1]
    assert close(dice(num_classes)(logits, mask), ref_dice(logits, mask))


def test_dice_log_loss_is_minus_log_of_soft_dice():
    logits, mask = binary_case()
    assert close(dice(1, log_loss=True)(logits, mask), ref_dice(logits, mask, log_loss=True))


def test_dice_pooling_differs_from_per_image_mean():
    logits, mask = binary_case()
    per_image = (ref_dice(logits[:1], mask[:1]) + ref_dice(logits[1:], mask[1:])) / 2
    assert not close(dice(1)(logits, mask), per_image)


def test_dice_of_an_all_empty_binary_batch_is_zero():
    logits, _ = binary_case()
    assert dice(1)(logits, torch.zeros(2, 5, 5, dtype=torch.long)).item() == 0.0


def test_dice_multiclass_class_absent_from_batch_adds_zero():
    logits, mask = multiclass_case()
    mask[mask == 2] = 1
    assert close(dice(3)(logits, mask), ref_dice(logits, mask))


@pytest.mark.parametrize("gamma", [0.0, 2.0])
@pytest.mark.parametrize("case", [binary_case, multiclass_case], ids=["binary", "multiclass"])
def test_focal_matches_reference(case, gamma):
    logits, mask = case()
    num_classes = logits.shape[1]
    assert close(focal(num_classes, gamma=gamma)(logits, mask), ref_focal(logits, mask, gamma=gamma))


def test_focal_with_gamma_zero_is_bce():
    logits, mask = binary_case()
    assert close(focal(1, gamma=0.0)(logits, mask), ref_bce(logits, mask))


def test_focal_alpha_weighs_positives_and_negatives():
    logits, mask = binary_case()
    assert close(focal(1, alpha=0.25, gamma=2.0)(logits, mask), ref_focal(logits, mask, gamma=2.0, alpha=0.25))


@pytest.mark.parametrize("alpha,beta,gamma", [(0.5, 0.5, 1.0), (0.3, 0.7, 1.0), (0.7, 0.3, 2.0)])
@pytest.mark.parametrize("case", [binary_case, multiclass_case], ids=["binary", "multiclass"])
def test_tversky_matches_reference(case, alpha, beta, gamma):
    logits, mask = case()
    loss = tversky(logits.shape[1], alpha=alpha, beta=beta, gamma=gamma)(logits, mask)
    assert close(loss, ref_tversky(logits, mask, alpha=alpha, beta=beta, gamma=gamma))


def test_tversky_with_equal_weights_is_dice():
    logits, mask = binary_case()
    assert close(tversky(1, alpha=0.5, beta=0.5)(logits, mask), ref_dice(logits, mask))


def test_tversky_alpha_penalises_false_positives():
    logits = torch.full((1, 1, 4, 4), 4.0)  # predicts foreground everywhere
    mask = torch.zeros(1, 4, 4, dtype=torch.long)
    mask[0, 0, 0] = 1  # one true pixel: nearly all the error is false positives
    assert tversky(1, alpha=0.9, beta=0.1)(logits, mask) > tversky(1, alpha=0.1, beta=0.9)(logits, mask)


@pytest.mark.parametrize("case", [binary_case, multiclass_case], ids=["binary", "multiclass"])
def test_lovasz_matches_lovasz_extension_of_jaccard(case):
    logits, mask = case()
    assert close(lovasz(logits.shape[1])(logits, mask), ref_lovasz(logits, mask))


def test_lovasz_per_image_averages_images():
    logits, mask = binary_case()
    assert close(lovasz(1, per_image=True)(logits, mask), ref_lovasz(logits, mask, per_image=True))


def test_combined_loss_is_weighted_sum_of_terms():
    logits, mask = binary_case()
    loss = CombinedLoss({"dice": dice(1), "bce": bce(1)}, {"dice": 0.3, "bce": 0.7})
    value = loss(logits, mask)
    assert close(value, 0.3 * ref_dice(logits, mask) + 0.7 * ref_bce(logits, mask))
    assert set(loss.terms) == {"dice", "bce"}
    assert close(loss.terms["dice"], ref_dice(logits, mask))
    assert close(loss.terms["bce"], ref_bce(logits, mask))


def test_combined_loss_weights_must_name_the_losses():
    with pytest.raises(ValueError, match="weights"):
        CombinedLoss({"dice": dice(1), "bce": bce(1)}, {"dice": 1.0})


# --- ignore_index: ignored pixels neither change the loss nor receive gradient --------------------

BINARY_LOSSES = {
    "bce": lambda: bce(1, ignore_index=IGNORE),
    "dice": lambda: dice(1, ignore_index=IGNORE),
    "focal": lambda: focal(1, ignore_index=IGNORE),
    "tversky": lambda: tversky(1, ignore_index=IGNORE, alpha=0.3, beta=0.7),
    "lovasz": lambda: lovasz(1, ignore_index=IGNORE),
    "combined": lambda: CombinedLoss(
        {"dice": dice(1, ignore_index=IGNORE), "bce": bce(1, ignore_index=IGNORE)}, {"dice": 0.5, "bce": 0.5}
    ),
}
MULTICLASS_LOSSES = {
    "ce": lambda: ce(3, ignore_index=IGNORE, smooth_factor=0.0),
    "ce_smoothed": lambda: ce(3, ignore_index=IGNORE, smooth_factor=0.1),
    "dice": lambda: dice(3, ignore_index=IGNORE),
    "focal": lambda: focal(3, ignore_index=IGNORE),
    "tversky": lambda: tversky(3, ignore_index=IGNORE, alpha=0.3, beta=0.7),
    "lovasz": lambda: lovasz(3, ignore_index=IGNORE),
}
IGNORE_CASES = [("binary", name, factory) for name, factory in BINARY_LOSSES.items()] + [
    ("multiclass", name, factory) for name, factory in MULTICLASS_LOSSES.items()
]


@pytest.mark.parametrize("kind,name,factory", IGNORE_CASES, ids=[f"{k}-{n}" for k, n, _ in IGNORE_CASES])
def test_ignored_pixels_do_not_change_loss_nor_get_gradient(kind, name, factory):
    logits, mask = (binary_case if kind == "binary" else multiclass_case)(ignore=True)
    ignored = (mask == IGNORE).unsqueeze(1).expand_as(logits)
    loss_fn = factory()

    first = logits.clone().requires_grad_(True)
    loss = loss_fn(first, mask)
    loss.backward()
    assert first.grad[ignored].abs().max() == 0
    assert first.grad[~ignored].abs().max() > 0

    changed = torch.where(ignored, torch.randn_like(logits) * 10, logits)
    assert torch.equal(loss_fn(changed, mask), loss.detach())


REFERENCES_WITH_IGNORE = [
    ("binary", "bce", lambda: bce(1, ignore_index=IGNORE), ref_bce),
    ("binary", "dice", lambda: dice(1, ignore_index=IGNORE), ref_dice),
    ("binary", "focal", lambda: focal(1, ignore_index=IGNORE), ref_focal),
    ("binary", "tversky", lambda: tversky(1, ignore_index=IGNORE), ref_tversky),
    ("binary", "lovasz", lambda: lovasz(1, ignore_index=IGNORE), ref_lovasz),
    ("multiclass", "dice", lambda: dice(3, ignore_index=IGNORE), ref_dice),
    ("multiclass", "focal", lambda: focal(3, ignore_index=IGNORE), ref_focal),
    ("multiclass", "tversky", lambda: tversky(3, ignore_index=IGNORE), ref_tversky),
    ("multiclass", "lovasz", lambda: lovasz(3, ignore_index=IGNORE), ref_lovasz),
]


@pytest.mark.parametrize(
    "kind,name,factory,reference", REFERENCES_WITH_IGNORE, ids=[f"{k}-{n}" for k, n, _, _ in REFERENCES_WITH_IGNORE]
)
def test_loss_with_ignore_index_equals_reference_on_counted_pixels(kind, name, factory, reference):
    logits, mask = (binary_case if kind == "binary" else multiclass_case)(ignore=True)
    assert close(factory()(logits, mask), reference(logits, mask, IGNORE))
