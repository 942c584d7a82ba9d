"""Per-type VQA evaluation speed: vigil's PerTypeAccuracy vs a straightforward per-answer pint reference.

Both score the same 20,000 (prediction, answer, question type) triples, a Kvasir-VQA-like mix: every question
type, sizes as ranges ("11-20mm", "<5mm") and values in mm and cm, free-form sizes with random decimals, counts
in digits and words, list colours in any order. The reference applies the same rules as a first implementation
would: it reads both answers again for every triple (the same text grammar, `read_quantity`) and compares pint
Quantity objects, converting units and tolerances through pint each time. vigil caches each distinct answer's
parse and each unit pair's conversion factor, so a split's few distinct truths, and the repeats among
predictions, are parsed once. Most of the speed-up is that caching: without its answer caches the metric is only
a few times faster than the reference (plain floats instead of pint objects). The cold rows
clear the caches first; the warm row re-scores with them filled, as a second validation epoch would. The pint
registry is built once, outside the timing, for both. Every triple is also scored by both, untimed, to count
disagreements (goal 0).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import TYPE_CHECKING, Any

from benchmarks.common import Row, median, spread, timed
from vigil.tasks.vqa import answers
from vigil.tasks.vqa.answers import answers_match
from vigil.tasks.vqa.metrics import PerTypeAccuracy
from vigil.tasks.vqa.question_types import NUMERIC_TYPES

if TYPE_CHECKING:
    import pint

NAME = "vqa_eval"
TRIPLES = 20_000
BATCH = 64
ABS_TOL = 0.5
REL_TOL = 0.1
TYPE_SHARES = {
    "yes_no": 0.3,
    "color": 0.15,
    "count_numeric": 0.15,
    "size_numeric": 0.15,
    "location": 0.1,
    "mcq": 0.05,
    "open_ended": 0.1,
}
TRUTHS = {
    "yes_no": ["yes", "no"],
    "color": ["pink", "red", "white", "pink, red", "red, white", "black", "yellow"],
    "count_numeric": ["0", "1", "2", "3", "4", "5"],
    "size_numeric": ["<5mm", "5-10mm", "11-20mm", ">20mm", "7 mm", "12 mm", "1.5 cm", "0.8 cm"],
    "location": ["center", "upper-left", "upper-right", "lower-left", "lower-right", "center-left"],
    "mcq": ["a", "b", "c", "d"],
    "open_ended": ["colonoscopy", "gastroscopy", "polyp removal", "biopsy forceps", "snare"],
}
YES_NO_STYLES = {"yes": ["yes", "Yes.", "true", "y"], "no": ["no", "No.", "false", "nope"]}
SIZE_STYLES = {"<5mm": "less than 0.5 cm", "5-10mm": "5 to 10 mm", "11-20mm": "1.1-2 cm", ">20mm": "more than 20 mm"}

Triple = tuple[str, str, str]
Bounds = tuple[Any, Any, bool, bool]  # (low, high) as pint Quantities, (low_open, high_open)


def triples(seed: int = 0) -> list[Triple]:
    """(prediction, answer, question type): half the predictions restate the truth in another form."""
    rng = random.Random(seed)
    kinds = rng.choices(list(TYPE_SHARES), weights=list(TYPE_SHARES.values()), k=TRIPLES)
    made = []
    for question_type in kinds:
        truth = rng.choice(TRUTHS[question_type])
        answer = truth if rng.random() < 0.5 else rng.choice(TRUTHS[question_type])
        made.append((restyled(answer, question_type, rng), truth, question_type))
    return made


def restyled(answer: str, question_type: str, rng: random.Random) -> str:
    """The answer as a model might write it."""
    if question_type == "yes_no":
        return rng.choice(YES_NO_STYLES[answer])
    if question_type == "count_numeric":
        return rng.choice([answer, answers.ONES[int(answer)], f"{answer} polyps"])
    if question_type == "size_numeric":
        free = rng.choice([f"{rng.uniform(1, 30):.1f} mm", f"{rng.uniform(0.1, 3):.2f} cm"])
        return rng.choice([answer, SIZE_STYLES.get(answer, answer), free])
    return rng.choice([answer, answer.upper(), f"The {answer}.", " and ".join(reversed(answer.split(", ")))])


def clear_caches() -> None:
    """Forget every parsed answer and unit conversion (the pint registry itself is kept)."""
    for cached in (answers.normalize_answer, answers.parse_count, answers.parse_size, answers.unit_name):
        cached.cache_clear()
    answers.conversion.cache_clear()


def vigil_table(data: list[Triple]) -> list[tuple[str, int, int, float]]:
    """Per-type table from PerTypeAccuracy, fed in evaluation-sized batches."""
    metric = PerTypeAccuracy(abs_tol=ABS_TOL, rel_tol=REL_TOL)
    for start in range(0, len(data), BATCH):
        predictions, truths, question_types = zip(*data[start : start + BATCH], strict=True)
        metric.update(predictions, truths, question_types)
    metric.compute()
    return metric.table()


def reference_table(data: list[Triple], registry: pint.UnitRegistry) -> list[tuple[str, int, int, float]]:
    """Per-type table from `reference_match`, one triple at a time."""
    count, correct = Counter(), Counter()
    for prediction, answer, question_type in data:
        count[question_type] += 1
        correct[question_type] += reference_match(prediction, answer, question_type, registry)
    return [(name, count[name], correct[name], correct[name] / count[name]) for name in TYPE_SHARES if count[name]]


def reference_match(prediction: str, truth: str, question_type: str, registry: pint.UnitRegistry) -> bool:
    """The metric's rules with pint Quantity objects built and compared for every answer, nothing cached."""
    if question_type not in NUMERIC_TYPES:
        return text_items(prediction) == text_items(truth)
    expected = pint_bounds(truth, question_type, registry)
    if expected is None:
        return text_items(prediction) == text_items(truth)
    given = pint_bounds(prediction, question_type, registry)
    if given is None:
        return False
    aligned = in_one_unit(given, expected)
    if aligned is None:
        return False
    given, expected = aligned
    if given[0] == given[1]:
        return pint_contains(expected, given[0])
    return expected[0] != expected[1] and all(pint_bounds_agree(given[i], expected[i]) for i in range(2))


def text_items(text: str) -> set[str]:
    """The set of normalised list items of an answer."""
    items = (answers.clean(item) for item in answers.LIST_SEPARATOR.split(answers.clean(text)))
    return {answers.YES_NO_SYNONYMS.get(item, item) for item in items} - {""}


def pint_bounds(text: str, question_type: str, registry: pint.UnitRegistry) -> Bounds | None:
    """(low, high, low_open, high_open) as pint Quantities, or None when the text is not a quantity."""
    import pint

    text = answers.numbers_from_words(answers.clean(text))
    if question_type == "count_numeric":
        text = answers.NO_COUNT.sub("0", text)
    written = answers.read_quantity(text)
    if written is None:
        return None
    if question_type == "count_numeric":
        low, high = registry.Quantity(written.low), registry.Quantity(written.high)
    else:
        unit = written.high_unit or written.low_unit
        try:
            low = registry.Quantity(written.low, written.low_unit or unit)
            high = registry.Quantity(written.high, unit).to(low.units)
        except (pint.PintError, ValueError):
            return None
    return min(low, high), max(low, high), written.low_open, written.high_open


def in_one_unit(given: Bounds, expected: Bounds) -> tuple[Bounds, Bounds] | None:
    """Both intervals in the truth's unit, a unitless side taking the other's; None when dimensions differ."""
    import pint

    if given[0].unitless:
        return (given[0].magnitude * expected[0].units, given[1].magnitude * expected[0].units, *given[2:]), expected
    if expected[0].unitless:
        return given, (expected[0].magnitude * given[0].units, expected[1].magnitude * given[0].units, *expected[2:])
    try:
        return (given[0].to(expected[0].units), given[1].to(expected[0].units), *given[2:]), expected
    except pint.DimensionalityError:
        return None


def margin(bound: Any) -> Any:
    """Tolerance at a true bound: max(abs_tol, rel_tol * |bound|) in its units, 0 at an infinite bound."""
    if math.isinf(bound.magnitude):
        return 0 * bound.units
    return max(ABS_TOL, REL_TOL * abs(bound.magnitude)) * bound.units


def slack(bound: Any) -> Any:
    """Float rounding slack at a true bound, as the metric allows."""
    return 0 * bound.units if math.isinf(bound.magnitude) else answers.ROUNDING * abs(bound.magnitude) * bound.units


def pint_contains(expected: Bounds, value: Any) -> bool:
    """Whether a value lies in the true interval widened by the tolerance, open bounds kept open."""
    low, high, low_open, high_open = expected
    if low_open:
        above = value > low - margin(low) + slack(low)
    else:
        above = value >= low - margin(low) - slack(low)
    if high_open:
        return above and value < high + margin(high) - slack(high)
    return above and value <= high + margin(high) + slack(high)


def pint_bounds_agree(given: Any, expected: Any) -> bool:
    """Whether two bounds agree within the tolerance at the true one; infinite bounds must be equal."""
    if math.isinf(given.magnitude) or math.isinf(expected.magnitude):
        return given == expected
    return abs(given - expected) <= margin(expected) + slack(expected)


def vqa_eval(args: Any) -> list[Row]:
    """Median answers/second of each side over `args.rounds` alternated rounds, the speed-up, and agreement."""
    data = triples()
    registry = answers.unit_registry()
    cold, warm, reference = [], [], []
    for _ in range(args.rounds):
        clear_caches()
        seconds, ours = timed(vigil_table, data)
        cold.append(seconds)
        warm.append(timed(vigil_table, data)[0])
        seconds, theirs = timed(reference_table, data, registry)
        reference.append(seconds)
    disagreements = sum(
        answers_match(prediction, truth, question_type, ABS_TOL, REL_TOL)
        != reference_match(prediction, truth, question_type, registry)
        for prediction, truth, question_type in data
    )
    distinct = len({(prediction, question_type) for prediction, _, question_type in data})
    rate = [len(data) / seconds for seconds in cold]
    ratios = [theirs_s / ours_s for ours_s, theirs_s in zip(cold, reference, strict=True)]
    micro = sum(row[2] for row in ours) / len(data)
    return [
        Row(NAME, "vigil PerTypeAccuracy", median(rate), "answers/s", note=f"{len(data)} triples, {distinct} distinct"),
        Row(NAME, "vigil, caches warm", median([len(data) / s for s in warm]), "answers/s", note="a second epoch"),
        Row(NAME, "per-answer pint reference", median([len(data) / s for s in reference]), "answers/s"),
        Row(NAME, "speed-up", median(ratios), "x", note=f"rounds {spread(ratios, 1)}", samples=ratios),
        Row(NAME, "answers scored differently", float(disagreements), "answers", goal="0", note=f"acc {micro:.3f}"),
        Row(NAME, "per-type tables equal", float(ours == theirs), "bool", goal="1"),
    ]
