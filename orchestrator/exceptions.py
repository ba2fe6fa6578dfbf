"""User-facing errors of the orchestrator. The CLI prints their message and exits non-zero."""

from __future__ import annotations

from jobs.errors import first_line

__all__ = ["first_line"]  # one definition (jobs.errors), re-exported for the orchestrator


class OrchestratorError(Exception):
    """Base: a problem the user can fix; the message says what and how."""

    exit_code = 1

    def __reduce__(self):
        return (type(self), self.args)


class SpecError(OrchestratorError):
    """The pipeline spec (or what it points at) is invalid. Nothing was started."""

    exit_code = 2


class SpecTooLarge(SpecError):
    """The spec document passes a size limit (bytes, or nodes once its aliases expand):
    refused before it is built (HTTP 413)."""


class UsageError(OrchestratorError):
    """A setting outside the spec (a flag, an environment variable) has a bad value."""

    exit_code = 2


class ClusterError(OrchestratorError):
    """Ray could not be reached or started as asked."""


class JobFailedError(OrchestratorError):
    """A stage ran and failed; the message carries the cause."""
