"""Question types: the vocabulary, and the ordered rules that infer a question's type from its text.

The types are `yes_no`, `color`, `count_numeric`, `size_numeric`, `location`, `mcq` and `open_ended`. A record's
own `question_type` wins; otherwise a record that lists `answer_candidates` is `mcq`, else the first rule
(`{type, pattern}`, a case-insensitive regex searched in the question) that matches gives the type, else
`open_ended`. Every type but `open_ended` is closed: it gets candidate answers (`answers.build_candidates`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vigil.core.errors import ConfigError

QUESTION_TYPES = ("yes_no", "color", "count_numeric", "size_numeric", "location", "mcq", "open_ended")
# Types whose answers are quantities (counts, sizes with units), compared as numbers.
NUMERIC_TYPES = ("count_numeric", "size_numeric")
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
    """A ConfigError unless `name` is a question type (for names read from the config)."""
    if name not in QUESTION_TYPES:
        raise ConfigError(f"{where}={name!r} is not a question type; valid: {', '.join(QUESTION_TYPES)}")


def check_question_type(question_type: str) -> None:
    """Raise a ValueError naming `question_type` unless it is one of QUESTION_TYPES (for values in code)."""
    if question_type not in QUESTION_TYPES:
        raise ValueError(f"unknown question type {question_type!r}; expected one of {QUESTION_TYPES}")
