"""Errors a user can cause in the tuning layer."""

from __future__ import annotations


class TuningError(Exception):
    """A study cannot run or resume as asked; the message says what to change."""
