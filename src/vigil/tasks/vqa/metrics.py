"""Answer accuracy per question type, as a torchmetrics Metric (per-type counts summed across DDP ranks).

Written here because no library scores VQA answers with units, number words and ranges. Rules, stated once:
- Every answer is normalised (`normalize_answer`): lowercase, a hyphen between words read as a space, whitespace
  collapsed, surrounding punctuation and a leading article ("a", "an", "the") dropped, and a one-word affirmation
  or negation ("y", "true", "nope" ...) mapped to "yes" / "no". A list answer ("pink, red", "red and pink") is a
  set: its distinct items, sorted, joined by ", ", so order and repeats do not matter.
- yes_no, color, location and mcq answers are right when their normal forms are equal. open_ended answers are
  scored the same way, so a paraphrase counts as wrong and open_ended accuracy is a lower bound.
- count_numeric and size_numeric answers are quantities: a number in digits or words (0 to 99), with a unit for
  sizes ("10mm" equals "1 cm", through pint), or an interval ("11-20mm", "5 to 10 mm", "between 5 and 10 mm",
  "<5mm", "at least 2 cm"); "about" or "~" before a value is ignored.
  - A single value is right when it lies in the truth (a value or an interval), widened on each side by the
    tolerance; an open bound ("<5mm") stays open, so "5mm" is not "<5mm".
  - An interval is right only against an interval truth whose bounds each agree within the tolerance (whether a
    bound is open is not compared). It is never right against a single-value truth, or a wide hedge such as
    "0-100 mm" would be right about every size.
  - The tolerance at a truth value v is max(abs_tol, rel_tol * |v|), abs_tol in the truth's unit (rel_tol is the
    one to use when truths mix units), plus 1e-9 * |v| for float rounding in unit conversion.
  - A side written without a unit takes the other side's unit; units of different dimensions never match.
  - Counts are unitless: words after the number ("3 polyps") name what is counted and are ignored, "no" and "none"
    are 0. abs_tol and rel_tol apply to counts too.
  - A prediction that is not a quantity is wrong; a truth that is not one ("not visible") is compared as text.
- `acc` is the accuracy over all answers (micro), `acc_macro` the mean of the per-type accuracies of the types
  that occurred, `acc/<type>` the accuracy of each type that occurred.
Parsed answers and unit conversions are cached, so a split's few distinct answers are parsed once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch
from torchmetrics import Metric

if TYPE_CHECKING:
    import pint

QUESTION_TYPES = ("yes_no", "color", "count_numeric", "size_numeric", "location", "mcq", "open_ended")
NUMERIC_TYPES = ("count_numeric", "size_numeric")

CACHE_SIZE = 2**16
ROUNDING = 1e-9

YES_NO_SYNONYMS = {
    **dict.fromkeys(("yes", "y", "yeah", "yep", "true"), "yes"),
    **dict.fromkeys(("no", "n", "nope", "false"), "no"),
}
LEADING_PUNCTUATION = re.compile(r"^[\s\"'`(\[{*,;:!?]+")
TRAILING_PUNCTUATION = re.compile(r"[\s\"'`)\]}*,;:!?.]+$")
LEADING_ARTICLE = re.compile(r"^(?:a|an|the)\s+")
# A hyphen between letters is spelling ("upper-left"); between digits it is a range ("11-20mm") and stays.
WORD_HYPHEN = re.compile(r"(?<=[^\W\d_])-(?=[^\W\d_])")
LIST_SEPARATOR = re.compile(r"\s*[,;]\s*|\s+(?:and|&)\s+")

ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
NUMBER_WORD = re.compile(
    rf"\b(?:(?P<tens>{'|'.join(TENS)})(?:[\s-](?P<unit>{'|'.join(ONES[1:10])}))?|(?P<ones>{'|'.join(ONES[::-1])}))\b"
)
NO_COUNT = re.compile(r"^(?:no|none)\b")

DASH = r"[-\u2013\u2014]"  # hyphen, en dash, em dash
NUMBER = r"\d+(?:\.\d+)?|\.\d+"
UNIT = r"[^\W\d_]+(?:\s+[^\W\d_]+)*"
UPPER_BOUNDS = ("<=", "≤", "at most", "up to", "<", "less than", "smaller than", "under", "below")
LOWER_BOUNDS = (">=", "≥", "at least", ">", "more than", "greater than", "larger than", "over", "above")
INCLUSIVE_BOUNDS = ("<=", "≤", "at most", "up to", ">=", "≥", "at least")
ONE_SIDED = re.compile(
    rf"(?P<op>{'|'.join(map(re.escape, sorted(UPPER_BOUNDS + LOWER_BOUNDS, key=len, reverse=True)))})"
    rf"\s*(?P<value>{NUMBER})\s*(?P<unit>{UNIT})?"
)
INTERVAL = re.compile(
    rf"(?P<between>between\s+)?(?P<low>{NUMBER})\s*(?P<low_unit>{UNIT})??"
    rf"\s*(?(between)(?:and|to|{DASH})|(?:to|{DASH}))\s*(?P<high>{NUMBER})\s*(?P<high_unit>{UNIT})?"
)
POINT = re.compile(rf"(?:about|around|approximately|approx|roughly|~)?\s*(?P<value>{NUMBER})\s*(?P<unit>{UNIT})?")


@dataclass(frozen=True)
class Quantity:
    """A numeric answer: the interval from `low` to `high` in `unit` ("" when unitless); a value has low == high."""

    low: float
    high: float
    unit: str = ""
    low_open: bool = False
    high_open: bool = False

    @property
    def is_value(self) -> bool:
        """Whether this is a single value rather than an interval."""
        return self.low == self.high


@dataclass(frozen=True)
class WrittenQuantity:
    """A numeric answer as written: bounds with the unit text written after each ("" when none)."""

    low: float
    low_unit: str
    high: float
    high_unit: str
    low_open: bool = False
    high_open: bool = False


@lru_cache(maxsize=CACHE_SIZE)
def normalize_answer(text: str) -> str:
    """The normal form of an answer (rules in the module docstring); list answers become sorted distinct items."""
    items = (clean(item) for item in LIST_SEPARATOR.split(clean(text)))
    return ", ".join(sorted({YES_NO_SYNONYMS.get(item, item) for item in items} - {""}))


def answers_match(prediction: str, truth: str, question_type: str, abs_tol: float = 0.0, rel_tol: float = 0.0) -> bool:
    """Whether `prediction` is a right answer to a question of `question_type` whose true answer is `truth`."""
    check_question_type(question_type)
    if question_type not in NUMERIC_TYPES:
        return normalize_answer(prediction) == normalize_answer(truth)
    parse = parse_count if question_type == "count_numeric" else parse_size
    expected = parse(truth)
    if expected is None:
        return normalize_answer(prediction) == normalize_answer(truth)
    given = parse(prediction)
    return given is not None and quantities_match(given, expected, abs_tol, rel_tol)


class PerTypeAccuracy(Metric):
    """Counts answers and right answers per question type; computes micro, macro and per-type accuracy."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(
        self,
        question_types: Sequence[str] = QUESTION_TYPES,
        abs_tol: float = 0.0,
        rel_tol: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for question_type in question_types:
            check_question_type(question_type)
        if abs_tol < 0 or rel_tol < 0:
            raise ValueError(f"tolerances must be >= 0, got abs_tol={abs_tol}, rel_tol={rel_tol}")
        self.question_types = tuple(question_types)
        self.type_index = {question_type: index for index, question_type in enumerate(self.question_types)}
        self.abs_tol = abs_tol
        self.rel_tol = rel_tol
        zeros = torch.zeros(len(self.question_types), dtype=torch.long)
        self.add_state("correct", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("count", default=zeros.clone(), dist_reduce_fx="sum")
        self.computed_counts = (zeros.clone(), zeros.clone())

    def update(self, predictions: Sequence[str], answers: Sequence[str], question_types: Sequence[str]) -> None:
        """Score a batch: each predicted answer against the true answer, by the rules of its question type."""
        if not len(predictions) == len(answers) == len(question_types):
            raise ValueError(
                f"got {len(predictions)} predictions, {len(answers)} answers and {len(question_types)} question types"
            )
        indices = [self.index_of(question_type) for question_type in question_types]
        hits = [
            answers_match(prediction, answer, question_type, self.abs_tol, self.rel_tol)
            for prediction, answer, question_type in zip(predictions, answers, question_types, strict=True)
        ]
        count, correct = [0] * len(self.question_types), [0] * len(self.question_types)
        for index, hit in zip(indices, hits, strict=True):
            count[index] += 1
            correct[index] += hit
        self.count += torch.tensor(count, device=self.device)
        self.correct += torch.tensor(correct, device=self.device)

    def compute(self) -> dict[str, torch.Tensor]:
        """`acc` (micro), `acc_macro` and `acc/<type>` over the types that occurred; empty before any answer."""
        self.computed_counts = (self.count.clone(), self.correct.clone())
        seen = self.count > 0
        if not seen.any():
            return {}
        per_type = self.correct[seen].double() / self.count[seen]
        results = {"acc": self.correct.sum().double() / self.count.sum(), "acc_macro": per_type.mean()}
        names = [name for name, present in zip(self.question_types, seen.tolist(), strict=True) if present]
        results.update({f"acc/{name}": accuracy for name, accuracy in zip(names, per_type, strict=True)})
        return {name: value.float() for name, value in results.items()}

    def table(self) -> list[tuple[str, int, int, float]]:
        """(type, count, correct, accuracy) for each type that occurred, from the counts `compute` saw (all ranks)."""
        # Cached after a compute on every rank; otherwise this compute syncs, so every rank must call it.
        self.compute()
        count, correct = self.computed_counts
        return [
            (name, int(n), int(right), int(right) / int(n))
            for name, n, right in zip(self.question_types, count.tolist(), correct.tolist(), strict=True)
            if n > 0
        ]

    def index_of(self, question_type: str) -> int:
        """The state row of a question type; a type this metric was not built for is an error naming it."""
        if question_type not in self.type_index:
            raise ValueError(f"unknown question type {question_type!r}; expected one of {self.question_types}")
        return self.type_index[question_type]


def check_question_type(question_type: str) -> None:
    """Raise a ValueError naming `question_type` unless it is one of QUESTION_TYPES."""
    if question_type not in QUESTION_TYPES:
        raise ValueError(f"unknown question type {question_type!r}; expected one of {QUESTION_TYPES}")


def clean(text: str) -> str:
    """Lowercase, hyphens between words as spaces, whitespace collapsed, surrounding punctuation and one leading
    article removed."""
    text = " ".join(WORD_HYPHEN.sub(" ", text.lower()).split())
    text = TRAILING_PUNCTUATION.sub("", LEADING_PUNCTUATION.sub("", text))
    return LEADING_ARTICLE.sub("", text)


def numbers_from_words(text: str) -> str:
    """Number words from zero to ninety-nine written as digits ("twenty-one polyps" -> "21 polyps")."""

    def digits(match: re.Match[str]) -> str:
        if match["ones"]:
            return str(ONES.index(match["ones"]))
        return str(TENS[match["tens"]] + (ONES.index(match["unit"]) if match["unit"] else 0))

    return NUMBER_WORD.sub(digits, text)


@lru_cache(maxsize=CACHE_SIZE)
def parse_count(text: str) -> Quantity | None:
    """A count answer as a unitless Quantity, or None when it is not one."""
    written = read_quantity(NO_COUNT.sub("0", numbers_from_words(clean(text))))
    if written is None:
        return None
    return ordered(Quantity(written.low, written.high, "", written.low_open, written.high_open))


@lru_cache(maxsize=CACHE_SIZE)
def parse_size(text: str) -> Quantity | None:
    """A measured answer as a Quantity in pint's name of its unit, or None when it is not one."""
    written = read_quantity(numbers_from_words(clean(text)))
    if written is None:
        return None
    unit = unit_name(written.high_unit or written.low_unit)
    low_unit = unit_name(written.low_unit) if written.low_unit else unit
    if unit is None or low_unit is None:
        return None
    low = Quantity(written.low, written.low, low_unit)
    if low_unit and unit and low_unit != unit:
        low = in_unit(low, unit)
        if low is None:
            return None
    return ordered(Quantity(low.low, written.high, unit, written.low_open, written.high_open))


def ordered(quantity: Quantity) -> Quantity:
    """The quantity with its bounds in increasing order ("20-11 mm" is read as 11 to 20 mm)."""
    if quantity.low <= quantity.high:
        return quantity
    return replace(quantity, low=quantity.high, high=quantity.low)


def read_quantity(text: str) -> WrittenQuantity | None:
    """Split a cleaned answer into bounds and unit texts: one-sided ("<5mm"), interval ("5-10 mm") or value."""
    if match := ONE_SIDED.fullmatch(text):
        value, unit, strict = float(match["value"]), match["unit"] or "", match["op"] not in INCLUSIVE_BOUNDS
        if match["op"] in UPPER_BOUNDS:
            return WrittenQuantity(-math.inf, "", value, unit, high_open=strict)
        return WrittenQuantity(value, unit, math.inf, "", low_open=strict)
    if match := INTERVAL.fullmatch(text):
        low, high = float(match["low"]), float(match["high"])
        return WrittenQuantity(low, match["low_unit"] or "", high, match["high_unit"] or "")
    if match := POINT.fullmatch(text):
        value, unit = float(match["value"]), match["unit"] or ""
        return WrittenQuantity(value, unit, value, unit)
    return None


@lru_cache(maxsize=1)
def unit_registry() -> pint.UnitRegistry:
    """The one pint registry, built on first use: importing pint and building it takes a third of a second."""
    import pint

    return pint.UnitRegistry()


@lru_cache(maxsize=CACHE_SIZE)
def unit_name(text: str) -> str | None:
    """pint's name of a written unit ("mm" -> "millimeter"), "" for no unit, None when pint does not know it."""
    if not text:
        return ""
    import pint

    try:
        return str(unit_registry().parse_units(text))
    except (pint.PintError, ValueError):
        return None


@lru_cache(maxsize=CACHE_SIZE)
def conversion(source: str, target: str) -> tuple[float, float] | None:
    """(scale, offset) taking a value in unit `source` to unit `target`; None when their dimensions differ."""
    import pint

    registry = unit_registry()
    try:
        zero = registry.Quantity(0.0, source).to(target).magnitude
        one = registry.Quantity(1.0, source).to(target).magnitude
    except pint.DimensionalityError:
        return None
    return one - zero, zero


def in_unit(quantity: Quantity, unit: str) -> Quantity | None:
    """`quantity` in `unit`, unchanged when either has no unit; None when their dimensions differ."""
    if not quantity.unit or not unit or quantity.unit == unit:
        return quantity
    factors = conversion(quantity.unit, unit)
    if factors is None:
        return None
    scale, offset = factors
    return replace(quantity, low=quantity.low * scale + offset, high=quantity.high * scale + offset, unit=unit)


def quantities_match(given: Quantity, expected: Quantity, abs_tol: float, rel_tol: float) -> bool:
    """Whether a predicted quantity is right for the true one, by the rules in the module docstring."""
    converted = in_unit(given, expected.unit)
    if converted is None:
        return False
    if converted.is_value:
        return contains(expected, converted.low, abs_tol, rel_tol)
    return (
        not expected.is_value
        and bounds_agree(converted.low, expected.low, abs_tol, rel_tol)
        and bounds_agree(converted.high, expected.high, abs_tol, rel_tol)
    )


def contains(interval: Quantity, value: float, abs_tol: float, rel_tol: float) -> bool:
    """Whether `value` lies in `interval` widened by the tolerance; rounding slack never opens an open bound."""
    low_margin = tolerance(interval.low, abs_tol, rel_tol)
    high_margin = tolerance(interval.high, abs_tol, rel_tol)
    if interval.low_open:
        above = value > interval.low - low_margin + rounding(interval.low)
    else:
        above = value >= interval.low - low_margin - rounding(interval.low)
    if interval.high_open:
        below = value < interval.high + high_margin - rounding(interval.high)
    else:
        below = value <= interval.high + high_margin + rounding(interval.high)
    return above and below


def bounds_agree(given: float, expected: float, abs_tol: float, rel_tol: float) -> bool:
    """Whether two interval bounds agree within the tolerance at the true one; infinite bounds must be equal."""
    if math.isinf(given) or math.isinf(expected):
        return given == expected
    return abs(given - expected) <= tolerance(expected, abs_tol, rel_tol) + rounding(expected)


def tolerance(value: float, abs_tol: float, rel_tol: float) -> float:
    """How far from a true value a right answer may be: max(abs_tol, rel_tol * |value|); 0 at an infinite bound."""
    return 0.0 if math.isinf(value) else max(abs_tol, rel_tol * abs(value))


def rounding(value: float) -> float:
    """Slack for float rounding in unit conversion at a bound (none at an infinite one)."""
    return 0.0 if math.isinf(value) else ROUNDING * abs(value)
