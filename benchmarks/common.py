"""What every benchmark returns: rows of one measured (or derived) number, with its unit and goal."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    """One line of the results table; `samples` keeps every repeat behind a median."""

    benchmark: str
    metric: str
    value: float
    unit: str
    goal: str = ""
    note: str = ""
    samples: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The row as plain JSON-ready values."""
        return {
            "benchmark": self.benchmark,
            "metric": self.metric,
            "value": self.value,
            "unit": self.unit,
            "goal": self.goal,
            "note": self.note,
            "samples": self.samples,
        }


def median(values: Sequence[float]) -> float:
    """The median of repeated measurements."""
    return float(statistics.median(values))


def spread(values: Sequence[float], digits: int = 3) -> str:
    """`min..max` of repeated measurements, to show how noisy a median is."""
    return f"{min(values):.{digits}f}..{max(values):.{digits}f}"


def timed(function: Callable[..., Any], *arguments: Any) -> tuple[float, Any]:
    """Seconds one call takes, and what it returned."""
    start = time.perf_counter()
    result = function(*arguments)
    return time.perf_counter() - start, result
