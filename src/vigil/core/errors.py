"""The errors vigil raises on purpose: each one says what is wrong in one line, and what to do."""

from __future__ import annotations


class VigilError(Exception):
    """Base of every error that vigil reports as one line instead of a traceback."""


class ConfigError(VigilError):
    """A composition that cannot run: an option of another task, an unknown argument, a bad value."""


class DataError(VigilError):
    """Bad input data: `<file>:<record>: <what is wrong> (<what to do>)`."""

    def __init__(self, file: object, record: object | None, what: str, todo: str) -> None:
        self.file = str(file)
        self.record = None if record is None else str(record)
        self.what = what
        self.todo = todo
        where = self.file if self.record is None else f"{self.file}:{self.record}"
        super().__init__(f"{where}: {what} ({todo})")


class AuditError(VigilError):
    """The audit found facts about the data that make training meaningless."""


class NonFiniteLossError(VigilError):
    """The training loss became NaN or infinite."""


class HealthAlertError(VigilError):
    """A health monitor crossed its threshold and the run is configured to stop on alerts."""


class SanityOverfitError(VigilError):
    """`debug=overfit` did not drive the loss below its threshold."""
