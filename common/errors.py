"""Errors a user can act on. The CLI prints them as one line, without a traceback."""

from __future__ import annotations


class KilnError(Exception):
    """Base of errors caused by input, configuration or environment, not by a kiln bug."""


class ConfigError(KilnError):
    """A configuration problem, with the YAML path of the offending key in the message."""


class InputError(KilnError):
    """A missing or unreadable input."""


class StageError(KilnError):
    """A stage that cannot run or failed; finished stages are kept."""
