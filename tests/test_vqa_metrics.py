"""Per-type accuracy as a torchmetrics Metric, against a plain-loop reference over hand-labelled answer pairs."""

from __future__ import annotations

import random

import pytest
import torch
from test_vqa_answers import LABELLED

from vigil.tasks.vqa.metrics import PerTypeAccuracy
from vigil.tasks.vqa.question_types import QUESTION_TYPES


def test_unknown_question_types_are_errors_naming_them():
    with pytest.raises(ValueError, match="'colour'"):
        PerTypeAccuracy(question_types=("color", "colour"))
    metric = PerTypeAccuracy(question_types=("yes_no", "color"))
    with pytest.raises(ValueError, match="'mcq'"):
        metric.update(["yes", "a"], ["yes", "a"], ["yes_no", "mcq"])
    with pytest.raises(ValueError, match="2 predictions, 1 answers"):
        metric.update(["yes", "no"], ["yes"], ["yes_no"])


def random_batch(size: int, seed: int, question_types=QUESTION_TYPES):
    """Labelled pairs drawn at random, restricted to `question_types`."""
    pool = [case for case in LABELLED if case[0] in question_types]
    return random.Random(seed).choices(pool, k=size)


def loop_reference(cases):
    """count, correct per type (types that occur), micro and macro accuracy, by a plain loop over the labels."""
    count, correct = {}, {}
    for question_type, _, _, right in cases:
        count[question_type] = count.get(question_type, 0) + 1
        correct[question_type] = correct.get(question_type, 0) + int(right)
    per_type = {name: correct[name] / count[name] for name in count}
    micro = sum(correct.values()) / sum(count.values())
    macro = sum(per_type.values()) / len(per_type)
    return count, correct, per_type, micro, macro


def fed(metric, cases, batches: int = 3):
    """The metric after seeing `cases` in `batches` batches."""
    for start in range(batches):
        part = cases[start::batches]
        metric.update([c[1] for c in part], [c[2] for c in part], [c[0] for c in part])
    return metric


@pytest.mark.parametrize(
    ("seed", "question_types"),
    [(0, QUESTION_TYPES), (1, QUESTION_TYPES), (2, ("yes_no", "size_numeric", "open_ended"))],
)
def test_per_type_micro_and_macro_accuracy_match_a_loop_reference(seed, question_types):
    cases = random_batch(200, seed, question_types)
    _, _, per_type, micro, macro = loop_reference(cases)
    got = fed(PerTypeAccuracy(), cases).compute()
    expected = {"acc": micro, "acc_macro": macro, **{f"acc/{name}": value for name, value in per_type.items()}}
    expected["samples"] = len(cases)
    assert set(got) == set(expected)
    assert {name: value.item() for name, value in got.items()} == pytest.approx(expected, abs=1e-6)
    assert not any(torch.isnan(value) for value in got.values())


def test_table_rows_are_type_count_correct_accuracy_in_type_order():
    cases = random_batch(120, 3, ("count_numeric", "color", "mcq"))
    count, correct, per_type, _, _ = loop_reference(cases)
    metric = fed(PerTypeAccuracy(), cases)
    metric.compute()
    expected = [(name, count[name], correct[name], per_type[name]) for name in ("color", "count_numeric", "mcq")]
    assert metric.table() == expected


def test_merged_states_equal_one_metric_over_all_answers():
    cases = random_batch(150, 4)
    first, second = fed(PerTypeAccuracy(), cases[:70]), fed(PerTypeAccuracy(), cases[70:])
    summed = {name: getattr(first, name) + getattr(second, name) for name in ("count", "correct")}
    first.merge_state(second)
    whole = fed(PerTypeAccuracy(), cases)
    assert torch.equal(first.count, whole.count) and torch.equal(first.correct, whole.correct)
    assert torch.equal(summed["count"], whole.count) and torch.equal(summed["correct"], whole.correct)
    assert first.compute() == whole.compute()
    assert first.table() == whole.table()


def test_tolerances_reach_the_metric():
    metric = PerTypeAccuracy(abs_tol=1.0)
    metric.update(["11 mm", "13 mm", "4"], ["1 cm", "1 cm", "3"], ["size_numeric", "size_numeric", "count_numeric"])
    assert metric.table() == [("count_numeric", 1, 1, 1.0), ("size_numeric", 2, 2, 1.0)]
    with pytest.raises(ValueError, match="abs_tol=-1"):
        PerTypeAccuracy(abs_tol=-1)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric PerTypeAccuracy was called before")
def test_an_empty_metric_computes_nothing():
    metric = PerTypeAccuracy()
    assert metric.compute() == {}
    assert metric.table() == []
