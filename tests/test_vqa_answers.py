"""What a right answer is: hand-labelled answer pairs (units, ranges, number words, lists, tolerances), normal
forms, and the candidate and majority answers drawn from the training split."""

from __future__ import annotations

import pytest

from vigil.tasks.vqa.answers import (
    answers_match,
    build_candidates,
    majority_answers,
    normalize_answer,
    normalize_question,
    question_prior_answers,
)
from vigil.tasks.vqa.prompts import Turn

# (question type, prediction, truth, right), each label decided by hand from the rules in the metric's docstring.
LABELLED = [
    ("yes_no", "Yes.", "yes", True),
    ("yes_no", "TRUE", "yes", True),
    ("yes_no", "nope", "no", True),
    ("yes_no", "no", "yes", False),
    ("color", "red and pink", "Pink, red", True),
    ("color", "pink", "pink, red", False),
    ("color", "The red", "red", True),
    ("location", "upper-left", "Upper-Left.", True),
    ("location", "upper left", "upper-left", True),
    ("mcq", "(B)", "b", True),
    ("mcq", "c", "b", False),
    ("open_ended", "Colonoscopy", "colonoscopy", True),
    ("open_ended", "a colonoscopy procedure", "colonoscopy", False),
    ("count_numeric", "three", "3", True),
    ("count_numeric", "3 polyps", "3", True),
    ("count_numeric", "none", "0", True),
    ("count_numeric", "2", "3", False),
    ("size_numeric", "10mm", "1 cm", True),
    ("size_numeric", "15 mm", "11-20mm", True),
    ("size_numeric", "25 mm", "11-20mm", False),
    ("size_numeric", "large", "5-10mm", False),
]


def test_ten_millimetres_is_one_centimetre():
    assert answers_match("10mm", "1 cm", "size_numeric")
    assert answers_match("1 cm", "10mm", "size_numeric")
    assert answers_match("0.01 m", "10 millimetres", "size_numeric")
    assert answers_match("3 mm", "0.3 cm", "size_numeric")
    assert not answers_match("10mm", "1 m", "size_numeric")


@pytest.mark.parametrize(
    ("prediction", "truth", "right"),
    [
        ("11 mm", "11-20mm", True),
        ("20mm", "11-20mm", True),
        ("1.5 cm", "11-20mm", True),
        ("10.9 mm", "11-20mm", False),
        ("21 mm", "11-20mm", False),
        ("7 mm", "5 to 10 mm", True),
        ("7 mm", "between 5 and 10 mm", True),
        ("4.9 mm", "<5mm", True),
        ("5mm", "<5mm", False),
        ("0.5 cm", "<5mm", False),
        ("5 mm", "at most 5 mm", True),
        ("20mm", ">20mm", False),
        ("2.1 cm", ">20mm", True),
        ("11 to 20 mm", "11-20mm", True),
        ("1.1-2 cm", "11-20mm", True),
        ("less than 0.5 cm", "<5mm", True),
        ("5-10mm", "11-20mm", False),
        (">20mm", "<5mm", False),
        ("0-100 mm", "7 mm", False),
    ],
)
def test_ranges(prediction, truth, right):
    assert answers_match(prediction, truth, "size_numeric") is right


@pytest.mark.parametrize(
    ("prediction", "truth", "question_type", "right"),
    [
        ("three", "3", "count_numeric", True),
        ("Twelve.", "12", "count_numeric", True),
        ("twenty-one", "21", "count_numeric", True),
        ("twenty one polyps", "21", "count_numeric", True),
        ("none", "0", "count_numeric", True),
        ("no polyps", "0", "count_numeric", True),
        ("zero", "0", "count_numeric", True),
        ("four", "3", "count_numeric", False),
        ("seven", "17", "count_numeric", False),
        ("ten millimetres", "1 cm", "size_numeric", True),
    ],
)
def test_number_words(prediction, truth, question_type, right):
    assert answers_match(prediction, truth, question_type) is right


@pytest.mark.parametrize(
    ("prediction", "truth", "question_type", "abs_tol", "rel_tol", "right"),
    [
        ("10.5 mm", "10 mm", "size_numeric", 0.5, 0.0, True),
        ("9.5 mm", "10 mm", "size_numeric", 0.5, 0.0, True),
        ("10.6 mm", "10 mm", "size_numeric", 0.5, 0.0, False),
        ("11 mm", "1 cm", "size_numeric", 0.1, 0.0, True),  # abs_tol is in the truth's unit: 0.1 cm
        ("11.5 mm", "1 cm", "size_numeric", 0.1, 0.0, False),
        ("22 mm", "20 mm", "size_numeric", 0.0, 0.1, True),
        ("18 mm", "20 mm", "size_numeric", 0.0, 0.1, True),
        ("22.1 mm", "20 mm", "size_numeric", 0.0, 0.1, False),
        ("6 mm", "5 mm", "size_numeric", 1.0, 0.1, True),  # max(1, 0.5)
        ("22 mm", "20 mm", "size_numeric", 1.0, 0.1, True),  # max(1, 2)
        ("22.5 mm", "20 mm", "size_numeric", 1.0, 0.1, False),
        ("21 mm", "11-20mm", "size_numeric", 1.0, 0.0, True),
        ("21.5 mm", "11-20mm", "size_numeric", 1.0, 0.0, False),
        ("10 mm", "11-20mm", "size_numeric", 1.0, 0.0, True),
        ("5.9 mm", "<5mm", "size_numeric", 1.0, 0.0, True),
        ("6 mm", "<5mm", "size_numeric", 1.0, 0.0, False),  # the widened bound stays open
        ("10-21 mm", "11-20mm", "size_numeric", 1.0, 0.0, True),
        ("10-22 mm", "11-20mm", "size_numeric", 1.0, 0.0, False),
        ("4", "3", "count_numeric", 1.0, 0.0, True),
        ("5", "3", "count_numeric", 1.0, 0.0, False),
    ],
)
def test_tolerance_at_the_boundary(prediction, truth, question_type, abs_tol, rel_tol, right):
    assert answers_match(prediction, truth, question_type, abs_tol, rel_tol) is right


@pytest.mark.parametrize(
    ("prediction", "truth"), [("10 kg", "10 mm"), ("1 s", "1 mm"), ("15 g", "11-20mm"), ("1 cm", "10 ml")]
)
def test_incompatible_units_never_match(prediction, truth):
    assert not answers_match(prediction, truth, "size_numeric", abs_tol=1e6, rel_tol=1e6)


@pytest.mark.parametrize(
    ("prediction", "truth", "right"),
    [("1", "1 cm", True), ("10", "1 cm", False), ("10 mm", "10", True), ("15", "11-20mm", True)],
)
def test_a_side_without_a_unit_takes_the_other_sides_unit(prediction, truth, right):
    assert answers_match(prediction, truth, "size_numeric") is right


@pytest.mark.parametrize("prediction", ["large", "", "10 polyps", "5 mm polyp", "mm", "ten or so"])
def test_a_prediction_that_is_not_a_quantity_is_wrong(prediction):
    assert not answers_match(prediction, "5-10mm", "size_numeric")
    assert not answers_match(prediction, "3", "count_numeric")


def test_a_truth_that_is_not_a_quantity_is_compared_as_text():
    assert answers_match("Not visible.", "not visible", "size_numeric")
    assert not answers_match("5 mm", "not visible", "size_numeric")


@pytest.mark.parametrize(
    ("prediction", "truth", "right"),
    [
        ("red and pink", "pink, red", True),
        ("Pink; Red", "red and pink", True),
        ("red, pink, red", "pink & red", True),
        ("pink", "pink, red", False),
        ("pink, red, white", "pink, red", False),
    ],
)
def test_list_answers_compare_as_sets(prediction, truth, right):
    assert answers_match(prediction, truth, "color") is right


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("Yes.", "yes"),
        ("y", "yes"),
        ("True", "yes"),
        ("yeah!", "yes"),
        ("N", "no"),
        ("FALSE", "no"),
        ("Nope", "no"),
        ("not", "not"),
        ("  The   Upper  Left. ", "upper left"),
        ("An ulcer", "ulcer"),
        ('"a"', "a"),
        ("<5mm", "<5mm"),
        ("red and the pink", "pink, red"),
    ],
)
def test_normalize_answer(text, normal):
    assert normalize_answer(text) == normal


def test_every_labelled_pair_is_scored_as_labelled():
    for question_type, prediction, truth, right in LABELLED:
        assert answers_match(prediction, truth, question_type) is right, (question_type, prediction, truth)


def test_an_unknown_question_type_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'colour'"):
        answers_match("red", "red", "colour")


def test_candidates_come_from_config_then_training_answers_by_frequency():
    turns = [Turn("q", a, "color") for a in ["red", "pink", "red", "Red", "white"]] + [Turn("q", "Yes", "yes_no")]
    candidates = build_candidates({"yes_no": ["yes", "no"], "color": ["pink"]}, turns, min_count=1)
    assert candidates["yes_no"] == ("yes", "no")
    assert candidates["color"] == ("pink", "red", "white")
    assert build_candidates({}, turns, min_count=2)["color"] == ("red",)
    assert majority_answers(turns) == {"color": "red", "yes_no": "yes"}


def test_the_question_prior_is_the_most_frequent_answer_of_the_same_question_text():
    turns = [
        Turn("Is there a polyp?", "yes", "yes_no"),
        Turn("is there  a polyp", "Yes", "yes_no"),
        Turn("Is there a polyp ?", "no", "yes_no"),
        Turn("What colour is the polyp?", "red", "color"),
        Turn("What colour is the instrument?", "Silver.", "color"),
    ]
    assert normalize_question("  Is there  a Polyp ? ") == "is there a polyp"
    assert question_prior_answers(turns) == {
        "is there a polyp": "yes",
        "what colour is the polyp": "red",
        "what colour is the instrument": normalize_answer("Silver."),
    }
