"""The one error type for user mistakes.

Anything raised as :class:`SegVolError` is the user's to fix (a missing file,
a bad prompt, a missing extra); the CLI prints its message on one line and
exits with code 2. Every other exception is a bug in segvol-rt.
"""

from __future__ import annotations


class SegVolError(Exception):
    """A user error: bad input, missing artifact or missing optional dependency."""


class MissingDependencyError(SegVolError):
    """An optional dependency is not installed; the message names the extra."""


def one_line(exc: BaseException) -> str:
    """``ClassName: message`` of a library's exception, on one line whatever it wrote."""
    return f"{exc.__class__.__name__}: {' '.join(str(exc).split())}"
