"""The errors vigil raises on purpose: each one says what is wrong in one line, and what to do."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any


class VigilError(Exception):
    """Base of every error that vigil reports as one line instead of a traceback."""


class ConfigError(VigilError):
    """A composition that cannot run: an option of another task, an unknown argument, a bad value."""


class DataError(VigilError):
    """Bad input data: `<file>:<record>: <what is wrong> (<what to do>)`.

    Raised in a DataLoader worker, it reaches the training process as torch re-raises it: `DataError(text)`,
    with the worker's traceback around the line; the one-argument form keeps the line alone.
    """

    def __init__(self, file: object, record: object | None = None, what: str | None = None, todo: str = "") -> None:
        if what is None:
            super().__init__(raised_line(str(file), type(self).__name__))
            self.file, self.record, self.what, self.todo = str(self), None, str(self), ""
            return
        self.file = str(file)
        self.record = None if record is None else str(record)
        self.what = what
        self.todo = todo
        where = self.file if self.record is None else f"{self.file}:{self.record}"
        super().__init__(f"{where}: {what} ({todo})")

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled whole (process pools send it back to their parent), not rebuilt from its message alone.
        return (self.__class__, (self.file, self.record, self.what, self.todo))


def raised_line(text: str, name: str) -> str:
    """The message of the last `<name>: ...` line of a traceback's text; the text itself when it has none."""
    marker = f"{name}: "
    lines = [line for line in text.splitlines() if marker in line]
    return lines[-1].split(marker, 1)[1] if lines else text


class CheckpointError(VigilError):
    """A checkpoint that cannot be opened, or may not be opened without the user's trust."""


class OutputError(VigilError):
    """Where the run writes cannot take its files: not writable, or without room for a checkpoint."""


class AuditError(VigilError):
    """The audit found facts about the data that make training meaningless."""


class PreflightError(VigilError):
    """A preflight check failed: the run would train, but on a bug (no gradient, coupled samples, leakage)."""


class NonFiniteLossError(VigilError):
    """The training loss became NaN or infinite."""


class HealthAlertError(VigilError):
    """A health monitor crossed its threshold and the run is configured to stop on alerts."""


class SanityOverfitError(VigilError):
    """`debug=overfit` did not drive the loss below its threshold."""


def exit_on_vigil_error(main: Callable[..., Any]) -> Callable[..., Any]:
    """Report a VigilError as one line on stderr and exit 1, instead of a traceback; also one that Hydra's
    `instantiate` wrapped (a factory's ConfigError reaches here as the cause of an InstantiationException)."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except Exception as error:
            cause = vigil_cause(error)
            if cause is None:
                raise
            print(f"{type(cause).__name__}: {cause}", file=sys.stderr, flush=True)
            sys.exit(1)

    return wrapper


def vigil_cause(error: BaseException) -> VigilError | None:
    """The VigilError that is `error` or that caused it, if any."""
    while error is not None and not isinstance(error, VigilError):
        error = error.__cause__
    return error
