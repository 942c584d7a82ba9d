"""Question types: inferred from the question text by ordered rules, and the candidate answers of closed types.

The types are the metric's (`yes_no`, `color`, `count_numeric`, `size_numeric`, `location`, `mcq`,
`open_ended`). A record's own `question_type` wins; otherwise a record that lists `answer_candidates` is `mcq`,
else the first rule (`{type, pattern}`, a case-insensitive regex searched in the question) that matches gives the
type, else `open_ended`. Every type but `open_ended` is closed: its candidates are the configured ones followed
by the answers the training split gives that type (at least `min_count` times, most frequent first), one per
normalised form.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from vigil.core.errors import ConfigError
from vigil.tasks.vqa.metrics import QUESTION_TYPES, normalize_answer
from vigil.tasks.vqa.prompts import Turn

OPEN_TYPE = "open_ended"
CLOSED_TYPES = tuple(question_type for question_type in QUESTION_TYPES if question_type != OPEN_TYPE)


@dataclass(frozen=True)
class TypeRule:
    """Questions matching `pattern` are of `question_type`."""

    question_type: str
    pattern: re.Pattern[str]


class QuestionTypeRules:
    """The ordered type rules of the data config; an unknown type or a bad pattern is a ConfigError."""

    def __init__(self, rules: Sequence[Mapping[str, str]]) -> None:
        self.rules = [self.rule(index, rule) for index, rule in enumerate(rules)]

    @staticmethod
    def rule(index: int, rule: Mapping[str, str]) -> TypeRule:
        """One checked rule."""
        if set(rule) != {"type", "pattern"}:
            raise ConfigError(f"data.question_types[{index}] has keys {sorted(rule)}; a rule is {{type, pattern}}")
        check_type_name(rule["type"], f"data.question_types[{index}].type")
        try:
            return TypeRule(rule["type"], re.compile(rule["pattern"], re.IGNORECASE))
        except re.error as error:
            where = f"data.question_types[{index}].pattern"
            raise ConfigError(f"{where} {rule['pattern']!r} is not a regex: {error}") from None

    def infer(self, question: str, has_candidates: bool) -> str:
        """The type of a question that has none: `mcq` when it lists candidates, else the first matching rule."""
        if has_candidates:
            return "mcq"
        for rule in self.rules:
            if rule.pattern.search(question):
                return rule.question_type
        return OPEN_TYPE


def check_type_name(name: str, where: str) -> None:
    """A ConfigError unless `name` is a question type."""
    if name not in QUESTION_TYPES:
        raise ConfigError(f"{where}={name!r} is not a question type; valid: {', '.join(QUESTION_TYPES)}")


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


def majority_answers(training_turns: Iterable[Turn]) -> dict[str, str]:
    """The most frequent training answer of each question type (by normalised form): the baseline to beat."""
    counts: dict[str, Counter] = {}
    for turn in training_turns:
        counts.setdefault(turn.question_type, Counter())[normalize_answer(turn.answer)] += 1
    return {name: counter.most_common(1)[0][0] for name, counter in counts.items()}
