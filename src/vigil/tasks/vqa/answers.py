"""What a right answer is: normal forms, quantities with units, number words and ranges; and the answer sets
of the training split (the candidates of closed types, the majority answer of each type).

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
Parsed answers and unit conversions are cached, so a split's few distinct answers are parsed once.

Candidates of a closed type are the configured ones followed by the answers the training split gives that type (at
least `min_count` times, most frequent first), one per normalised form; the majority answer of a type is its most
frequent normalised training answer.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING

from vigil.core.errors import ConfigError
from vigil.tasks.vqa.prompts import Turn
from vigil.tasks.vqa.question_types import CLOSED_TYPES, NUMERIC_TYPES, OPEN_TYPE, check_question_type, check_type_name

if TYPE_CHECKING:
    import pint

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


def build_candidates(
    configured: Mapping[str, Sequence[str]], training_turns: Iterable[Turn], min_count: int = 1
) -> dict[str, tuple[str, ...]]:
    """The candidate answers of each closed type: configured first, then frequent training answers."""
    for name in configured:
        check_type_name(name, f"data.candidates.{name}")
        if name == OPEN_TYPE:
            raise ConfigError("data.candidates.open_ended: open questions have no candidates; remove the entry")
    answers = {name: Counter() for name in CLOSED_TYPES}
    for turn in training_turns:
        if turn.question_type in answers:
            answers[turn.question_type][turn.answer] += 1
    candidates = {}
    for name in CLOSED_TYPES:
        frequent = [answer for answer, count in answers[name].most_common() if count >= min_count]
        distinct = unique_by_normal_form([*configured.get(name, ()), *frequent])
        if distinct:
            candidates[name] = distinct
    return candidates


def unique_by_normal_form(answers: Iterable[str]) -> tuple[str, ...]:
    """The answers in order, dropping any whose normalised form an earlier one already has."""
    seen, kept = set(), []
    for answer in answers:
        form = normalize_answer(answer)
        if form not in seen:
            seen.add(form)
            kept.append(answer)
    return tuple(kept)


def normalize_question(question: str) -> str:
    """A question's text as the question-prior baseline matches it: lower case, single spaces, no end mark."""
    return " ".join(question.lower().split()).rstrip(" ?.!")


def question_prior_answers(training_turns: Iterable[Turn]) -> dict[str, str]:
    """The most frequent training answer (by normalised form) of each normalised question text: a text-only
    baseline that knows which answers a question takes but never sees the image."""
    counts: dict[str, Counter] = {}
    for turn in training_turns:
        counts.setdefault(normalize_question(turn.question), Counter())[normalize_answer(turn.answer)] += 1
    return {question: counter.most_common(1)[0][0] for question, counter in counts.items()}


def majority_answers(training_turns: Iterable[Turn]) -> dict[str, str]:
    """The most frequent training answer of each question type (by normalised form): the baseline to beat."""
    counts: dict[str, Counter] = {}
    for turn in training_turns:
        counts.setdefault(turn.question_type, Counter())[normalize_answer(turn.answer)] += 1
    return {name: counter.most_common(1)[0][0] for name, counter in counts.items()}
