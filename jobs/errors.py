"""Errors a user can cause in the training layer; each names the spec field to fix."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what a
    one-line error quotes from a library's multi-line one."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class JobsError(Exception):
    """Base of the training layer's user-facing errors."""


class DataError(JobsError):
    """The data does not match the spec: ``field`` is the dotted spec path to fix."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self):  # crosses Ray process boundaries intact
        return (DataError, (self.field, self.message))


class TrainingError(JobsError):
    """Training could not finish (e.g. a checkpoint to resume from is gone)."""
